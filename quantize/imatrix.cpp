#include "quantize/imatrix.h"

#include <cstring>
#include <map>
#include <memory>

#include "backends/cpu/ops.h"
#include "models/deepseek2.h"
#include "models/runner.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

namespace ds3::quant {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error("imatrix", msg); }

constexpr std::string_view kSumSuffix = ".in_sum2";
constexpr std::string_view kCountSuffix = ".counts";
constexpr std::string_view kExpertTokens = "ds3.expert_tokens";

std::vector<float> read_f32(const gguf::File& f, const gguf::TensorInfo& t) {
    if (t.type != TypeId::F32)
        fail(f.path() + ": tensor " + t.name + " is " + std::string(type_traits(t.type).name) + ", expected f32");
    std::vector<float> v(t.n_elements());
    const auto d = f.tensor_data(t);
    std::memcpy(v.data(), d.data(), v.size() * 4);
    return v;
}

std::span<const uint8_t> bytes_of(const std::vector<float>& v) {
    return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4};
}

}  // namespace

bool Imatrix::importance(const std::string& weight, int64_t mat, int64_t ne0, std::vector<float>& out) const {
    auto it = entries.find(weight);
    if (it == entries.end()) return false;
    const ImatrixEntry& e = it->second;
    if (e.ne0 != ne0 || mat < 0 || mat >= e.n_mat)
        fail(weight + ": the importance matrix has " + std::to_string(e.n_mat) + " x " + std::to_string(e.ne0) +
             " values, the tensor needs matrix " + std::to_string(mat) + " of rows of " + std::to_string(ne0) +
             " (an imatrix of another model?)");
    const double c = e.counts[static_cast<size_t>(mat)];
    if (!(c > 0)) return false;
    out.resize(static_cast<size_t>(ne0));
    for (int64_t i = 0; i < ne0; ++i)
        out[static_cast<size_t>(i)] = static_cast<float>(e.in_sum2[static_cast<size_t>(mat * ne0 + i)] / c);
    return true;
}

void Imatrix::save(const std::string& path) const {
    gguf::Writer w(path);
    w.set_kv("general.type", gguf::Value::str("imatrix"));
    w.set_kv("ds3.imatrix.chunk_count", gguf::Value::u64(chunk_count));
    w.set_kv("ds3.imatrix.chunk_size", gguf::Value::u64(chunk_size));
    w.set_kv("ds3.imatrix.n_tokens", gguf::Value::u64(n_tokens));
    w.set_kv("ds3.imatrix.dataset", gguf::Value::str(dataset));
    w.set_kv("ds3.imatrix.model", gguf::Value::str(model));
    std::vector<std::vector<float>> data;
    for (const auto& [name, e] : entries) {
        w.add_tensor(name + std::string(kSumSuffix), {static_cast<uint64_t>(e.ne0), static_cast<uint64_t>(e.n_mat)},
                     TypeId::F32);
        data.emplace_back(e.in_sum2.begin(), e.in_sum2.end());
        w.add_tensor(name + std::string(kCountSuffix), {1, static_cast<uint64_t>(e.n_mat)}, TypeId::F32);
        data.emplace_back(e.counts.begin(), e.counts.end());
    }
    if (n_expert > 0 && n_layer > 0) {
        w.add_tensor(std::string(kExpertTokens), {static_cast<uint64_t>(n_expert), static_cast<uint64_t>(n_layer)},
                     TypeId::F32);
        data.emplace_back(expert_tokens.begin(), expert_tokens.end());
    }
    w.write_header();
    for (const auto& d : data) w.write_tensor_data(bytes_of(d));
    w.finish();
}

Imatrix Imatrix::load(const std::string& path) {
    const gguf::File f = gguf::File::open(path);
    const std::string type = f.get_string("general.type", "");
    if (type != "imatrix")
        fail(path + ": general.type is '" + type + "', expected 'imatrix' (a file written by ds3 imatrix)");
    Imatrix im;
    im.chunk_count = f.get_u64("ds3.imatrix.chunk_count", 0);
    im.chunk_size = f.get_u64("ds3.imatrix.chunk_size", 0);
    im.n_tokens = f.get_u64("ds3.imatrix.n_tokens", 0);
    im.dataset = f.get_string("ds3.imatrix.dataset", "");
    im.model = f.get_string("ds3.imatrix.model", "");
    for (const gguf::TensorInfo& t : f.tensors()) {
        const std::string_view n = t.name;
        if (n == kExpertTokens) {
            if (t.ne.size() != 2) fail(path + ": " + t.name + " must be 2-D {n_expert, n_layer}");
            im.n_expert = static_cast<int64_t>(t.ne[0]);
            im.n_layer = static_cast<int64_t>(t.ne[1]);
            const auto v = read_f32(f, t);
            im.expert_tokens.assign(v.begin(), v.end());
            continue;
        }
        if (n.size() > kSumSuffix.size() && n.substr(n.size() - kSumSuffix.size()) == kSumSuffix) {
            const std::string base(n.substr(0, n.size() - kSumSuffix.size()));
            const gguf::TensorInfo* c = f.find_tensor(base + std::string(kCountSuffix));
            if (!c) fail(path + ": " + t.name + " has no " + base + std::string(kCountSuffix));
            if (t.ne.size() > 2) fail(path + ": " + t.name + " must be 2-D {ne0, n_mat}");
            ImatrixEntry e;
            e.ne0 = static_cast<int64_t>(t.ne[0]);
            e.n_mat = t.ne.size() == 2 ? static_cast<int64_t>(t.ne[1]) : 1;
            if (static_cast<int64_t>(c->n_elements()) != e.n_mat)
                fail(path + ": " + c->name + " has " + std::to_string(c->n_elements()) + " counts, " + t.name + " has " +
                     std::to_string(e.n_mat) + " matrices");
            const auto s = read_f32(f, t);
            const auto k = read_f32(f, *c);
            e.in_sum2.assign(s.begin(), s.end());
            e.counts.assign(k.begin(), k.end());
            im.entries.emplace(base, std::move(e));
        }
    }
    if (im.entries.empty()) fail(path + ": no <weight>.in_sum2 tensors");
    return im;
}

ImatrixCollector::ImatrixCollector(const Deepseek2Model& model, Imatrix& out, int n_threads)
    : im_(out), n_threads_(n_threads) {
    im_.n_layer = model.hp.n_layer;
    im_.n_expert = model.hp.n_expert;
    if (im_.expert_tokens.size() != static_cast<size_t>(im_.n_layer * im_.n_expert))
        im_.expert_tokens.assign(static_cast<size_t>(im_.n_layer * im_.n_expert), 0.0);
}

void ImatrixCollector::attach(Runner& r) {
    Imatrix* im = &im_;
    const int nt = n_threads_;
    // Σ x² per column of `rows` rows (stride `stride`, `cols` columns from `x`) into
    // matrix `mat` of w's entry.
    auto add = [im](const Weight& w, int64_t mat, const float* x, int64_t rows, int64_t stride) {
        const int64_t ne0 = w.ne[0];
        ImatrixEntry& e = im->entries[w.name];
        if (e.in_sum2.empty()) {
            e.ne0 = ne0;
            e.n_mat = w.n_dims >= 3 ? w.ne[2] : 1;
            e.in_sum2.assign(static_cast<size_t>(e.ne0 * e.n_mat), 0.0);
            e.counts.assign(static_cast<size_t>(e.n_mat), 0.0);
        }
        double* s = e.in_sum2.data() + mat * ne0;
        for (int64_t t = 0; t < rows; ++t)
            for (int64_t i = 0; i < ne0; ++i) s[i] += static_cast<double>(x[t * stride + i]) * x[t * stride + i];
        e.counts[static_cast<size_t>(mat)] += static_cast<double>(rows);
    };
    // Per layer, the latent rows MLA has seen (for W_vb's inputs, below).
    auto caches = std::make_shared<std::map<int, std::vector<float>>>();
    r.set_observer([im, nt, add, caches](const Node& n, std::span<const float* const> in) {
        switch (n.op) {
        case Op::mul_mat:
            add(*n.w[0], 0, in[0], n.rows, n.w[0]->ne[0]);
            return;
        case Op::logits: {
            const float* x = in[0] + (n.last_only ? (n.src_rows - 1) * n.src_cols : 0);
            add(*n.w[0], 0, x, n.rows, n.w[0]->ne[0]);
            return;
        }
        case Op::shared_ffn: {
            // ffn_down's input is the SwiGLU of the node's own gate/up: recomputed here.
            const int64_t T = n.rows, F = n.w[0]->ne[1];
            add(*n.w[0], 0, in[0], T, n.cols);
            add(*n.w[1], 0, in[0], T, n.cols);
            std::vector<float> g(static_cast<size_t>(T * F)), u(g.size());
            cpu::matmul(*n.w[0], 0, in[0], T, g.data(), nt);
            cpu::matmul(*n.w[1], 0, in[0], T, u.data(), nt);
            cpu::swiglu(g.data(), u.data(), T * F, g.data());
            add(*n.w[2], 0, g.data(), T, F);
            return;
        }
        case Op::moe_ffn: {
            const int64_t T = n.rows, D = n.cols, F = n.w[0]->ne[1];
            const int k = n.route.n_used, E = n.route.n_expert;
            const float* route = in[1];
            std::vector<std::vector<int64_t>> by_expert(static_cast<size_t>(E));
            for (int64_t t = 0; t < T; ++t)
                for (int j = 0; j < k; ++j) {
                    const int e = static_cast<int>(route[t * 2 * k + k + j]);
                    if (e < 0 || e >= E) continue;  // the backend has already refused it
                    if (!n.experts.empty() && !n.experts[static_cast<size_t>(e)]) continue;
                    by_expert[static_cast<size_t>(e)].push_back(t);
                }
            std::vector<float> xe, g, u;
            for (int e = 0; e < E; ++e) {
                const auto& list = by_expert[static_cast<size_t>(e)];
                if (list.empty()) continue;
                const int64_t m = static_cast<int64_t>(list.size());
                if (n.layer >= 0 && n.layer < im->n_layer)
                    im->expert_tokens[static_cast<size_t>(n.layer * im->n_expert + e)] += static_cast<double>(m);
                xe.resize(static_cast<size_t>(m * D));
                for (int64_t i = 0; i < m; ++i)
                    std::memcpy(xe.data() + i * D, in[0] + list[static_cast<size_t>(i)] * D, static_cast<size_t>(D) * 4);
                add(*n.w[0], e, xe.data(), m, D);
                add(*n.w[1], e, xe.data(), m, D);
                g.resize(static_cast<size_t>(m * F));
                u.resize(g.size());
                cpu::matmul(*n.w[0], e, xe.data(), m, g.data(), nt);
                cpu::matmul(*n.w[1], e, xe.data(), m, u.data(), nt);
                cpu::swiglu(g.data(), u.data(), m * F, g.data());
                add(*n.w[2], e, g.data(), m, F);
            }
            return;
        }
        case Op::mla_attn: {
            // W_kb meets each head's q_nope (absorbed: q_nope·W_kb c): per-head columns.
            const AttnParams& p = n.attn;
            const int64_t T = n.rows, qdim = p.qk_nope + p.qk_rope, width = p.kv_lora + p.qk_rope;
            for (int h = 0; h < p.n_head; ++h) add(*n.w[0], h, in[0] + h * qdim, T, p.n_head * qdim);
            // W_vb meets each head's attended latent, which exists only inside the op: the
            // attention runs again here on the collector's own copy of the layer's cache
            // (the node's latent and k_pe rows, appended batch by batch).
            std::vector<float>& cache = (*caches)[n.layer];
            const size_t need = static_cast<size_t>((p.pos0 + T) * width);
            if (cache.size() < need) cache.resize(need);
            std::vector<float> out(static_cast<size_t>(T * n.cols));
            std::vector<float> ctx(static_cast<size_t>(T * p.n_head * p.kv_lora));
            cpu::mla_attn(n, in[0], in[1], in[2], cache.data(), p.pos0 + T, out.data(), nt, ctx.data());
            for (int h = 0; h < p.n_head; ++h)
                add(*n.w[1], h, ctx.data() + h * p.kv_lora, T, static_cast<int64_t>(p.n_head) * p.kv_lora);
            return;
        }
        default:
            return;
        }
    });
}

}  // namespace ds3::quant
