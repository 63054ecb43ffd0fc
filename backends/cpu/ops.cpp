#include "backends/cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "backends/cpu/simd.h"
#include "quantize/float.h"
#include "runtime/error.h"

namespace ds3::cpu {

namespace {

float silu(float x) { return x / (1.0f + std::exp(-x)); }

int threads_or_default(int n) { return n > 0 ? n : omp_get_max_threads(); }

// Below this many multiply-adds a parallel region costs more than it saves (thread
// wake-up is microseconds; on a loaded machine much more).
constexpr int64_t kParallelMinWork = int64_t{1} << 16;
constexpr int64_t kChunkWork = int64_t{1} << 15;

}  // namespace

bool weight_type_supported(TypeId t) { return type_traits(t).to_float != nullptr; }

namespace {

// Quantized weights with a dot kernel: the activations meet them in the kernel's own
// format (Q8_0 / Q8_K blocks, or f32 for FP8), so integer dots do the work.
bool uses_vec_dot(TypeId t) {
    const TypeTraits& tr = type_traits(t);
    return t != TypeId::F32 && t != TypeId::F16 && t != TypeId::BF16 && tr.vec_dot != nullptr;
}

// y = W_mat · x for a weight type that has vec_dot: each activation row is quantised to
// the weight's vec_dot_type once, then every weight row is dotted with it (a weight row is
// read once per batch; its blocks are never expanded to f32).
void matmul_vec_dot(const Weight& w, int64_t mat, const float* x, int64_t n_rows, float* y, int n_threads) {
    const TypeTraits& tr = type_traits(w.type);
    const int64_t in = w.ne[0], out = w.ne[1];
    const TypeTraits& act = type_traits(tr.vec_dot_type);
    const bool f32_act = tr.vec_dot_type == TypeId::F32;
    if (!f32_act && (act.from_float == nullptr || in % act.block_size != 0))
        throw Error("cpu", w.name + ": row of " + std::to_string(in) + " elements cannot be quantised to " +
                               std::string(act.name) + " for the dot product");
    const int64_t act_row_bytes = f32_act ? in * 4 : in / act.block_size * act.type_size;
    std::vector<uint8_t> xq;
    const uint8_t* xa = reinterpret_cast<const uint8_t*>(x);
    if (!f32_act) {
        xq.resize(static_cast<size_t>(act_row_bytes * n_rows));
        for (int64_t r = 0; r < n_rows; ++r) act.from_float(x + r * in, xq.data() + r * act_row_bytes, in, nullptr);
        xa = xq.data();
    }
    const VecDotFn dot = tr.vec_dot;
    const bool parallel = in * out * n_rows >= kParallelMinWork;
    const int64_t chunk = std::max<int64_t>(1, kChunkWork / std::max<int64_t>(1, in * n_rows));
#pragma omp parallel for num_threads(threads_or_default(n_threads)) if (parallel) schedule(dynamic, chunk)
    for (int64_t o = 0; o < out; ++o) {
        const uint8_t* wr = w.row(o, mat);
        for (int64_t r = 0; r < n_rows; ++r) y[r * out + o] = dot(in, wr, xa + r * act_row_bytes);
    }
}

}  // namespace

void dequant_row(TypeId t, const uint8_t* src, float* dst, int64_t n) {
    switch (t) {
        case TypeId::F32:
            std::memcpy(dst, src, static_cast<size_t>(n) * 4);
            return;
        case TypeId::BF16:
            best_kernels().bf16_to_f32(src, dst, n);
            return;
        case TypeId::F16:
            best_kernels().f16_to_f32(src, dst, n);
            return;
        default: {
            const TypeTraits& tr = type_traits(t);
            if (!tr.to_float)
                throw Error("cpu", std::string("weight type ") + std::string(tr.name) +
                                       " is not supported by the CPU backend (no dequantiser)");
            tr.to_float(src, dst, n);
            return;
        }
    }
}

float dot_f32(const float* a, const float* b, int64_t n) { return best_kernels().dot_f32(a, b, n); }

void matmul(const Weight& w, int64_t mat, const float* x, int64_t n_rows, float* y, int n_threads) {
    // Checked here: an exception must not escape the OpenMP region below.
    if (!weight_type_supported(w.type))
        throw Error("cpu", w.name + ": weight type " + std::string(type_traits(w.type).name) + " is not supported yet");
    if (uses_vec_dot(w.type)) return matmul_vec_dot(w, mat, x, n_rows, y, n_threads);
    const int64_t in = w.ne[0], out = w.ne[1];
    const TypeId t = w.type;
    const RowKernels& k = best_kernels();
    const bool direct = t == TypeId::F32;
    // Decode (one activation row): convert while multiplying, so each weight row is
    // read once and never written back out.
    float (*fused)(const uint8_t*, const float*, int64_t) =
        n_rows != 1 ? nullptr : t == TypeId::BF16 ? k.dot_bf16 : t == TypeId::F16 ? k.dot_f16 : nullptr;
    const bool parallel = in * out * n_rows >= kParallelMinWork;
    // Dynamic chunks of ~kChunkWork multiply-adds: a descheduled thread (a shared
    // machine) does not hold the others at the barrier, and short rows (a 129k-row
    // lm_head of 32 columns) do not turn into thousands of tiny chunks.
    const int64_t chunk = std::max<int64_t>(1, kChunkWork / std::max<int64_t>(1, in * n_rows));
    if (n_rows == 1) {
#pragma omp parallel for num_threads(threads_or_default(n_threads)) if (parallel) schedule(dynamic, chunk)
        for (int64_t o = 0; o < out; ++o) {
            const uint8_t* src = w.row(o, mat);
            y[o] = fused ? fused(src, x, in) : k.dot_f32(reinterpret_cast<const float*>(src), x, in);
        }
        return;
    }
    // Batches: blocks of 4 weight rows (converted to f32 once) against pairs of
    // activation rows through the 4x2 micro-kernel.
    const int64_t n_blocks = (out + 3) / 4;
    const int64_t block_chunk = std::max<int64_t>(1, chunk / 4);
#pragma omp parallel num_threads(threads_or_default(n_threads)) if (parallel)
    {
        std::vector<float> rows(direct ? 0 : static_cast<size_t>(4 * in));
#pragma omp for schedule(dynamic, block_chunk)
        for (int64_t b = 0; b < n_blocks; ++b) {
            const int64_t o0 = 4 * b, nr = std::min<int64_t>(4, out - o0);
            const float* wr[4];
            for (int64_t i = 0; i < 4; ++i) {
                const int64_t o = o0 + std::min(i, nr - 1);  // a short last block repeats its last row
                if (direct) {
                    wr[i] = reinterpret_cast<const float*>(w.row(o, mat));
                } else {
                    if (i < nr) dequant_row(t, w.row(o, mat), rows.data() + i * in, in);
                    wr[i] = rows.data() + std::min(i, nr - 1) * in;
                }
            }
            float acc[8];
            int64_t r = 0;
            for (; r + 2 <= n_rows; r += 2) {
                k.dot_4x2_f32(wr, x + r * in, x + (r + 1) * in, in, acc);
                for (int64_t i = 0; i < nr; ++i) {
                    y[r * out + o0 + i] = acc[2 * i];
                    y[(r + 1) * out + o0 + i] = acc[2 * i + 1];
                }
            }
            for (; r < n_rows; ++r)
                for (int64_t i = 0; i < nr; ++i) y[r * out + o0 + i] = k.dot_f32(wr[i], x + r * in, in);
        }
    }
}

void get_rows(const Weight& embd, const int32_t* ids, int64_t n, float* y) {
    const int64_t cols = embd.ne[0];
    for (int64_t r = 0; r < n; ++r) {
        if (ids[r] < 0 || ids[r] >= embd.ne[1])
            throw Error("cpu", "token id " + std::to_string(ids[r]) + " outside [0, " +
                                   std::to_string(embd.ne[1]) + ")");
        dequant_row(embd.type, embd.row(ids[r]), y + r * cols, cols);
    }
}

void rms_norm(const float* x, const Weight& gain, float eps, int64_t rows, int64_t cols, float* y) {
    std::vector<float> g(static_cast<size_t>(cols));
    dequant_row(gain.type, gain.data, g.data(), cols);
    for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        // The mean of squares in double: cheap here and keeps long rows exact enough.
        double ss = 0.0;
        for (int64_t i = 0; i < cols; ++i) ss += static_cast<double>(xr[i]) * xr[i];
        const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(cols) + eps));
        for (int64_t i = 0; i < cols; ++i) y[r * cols + i] = xr[i] * inv * g[static_cast<size_t>(i)];
    }
}

void swiglu(const float* gate, const float* up, int64_t n, float* y) {
    for (int64_t i = 0; i < n; ++i) y[i] = silu(gate[i]) * up[i];
}

void rope(const Node& n, const int32_t* positions, float* y) {
    const RopeTable& tab = *n.rope;
    const int half = n.rope_dim / 2;
    std::vector<float> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
    for (int64_t r = 0; r < n.rows; ++r) {
        // Angles in double: positions reach 10^5 and float loses the low bits of pos·freq.
        for (int i = 0; i < half; ++i) {
            double theta = static_cast<double>(positions[r]) * tab.inv_freq[static_cast<size_t>(i)];
            cs[static_cast<size_t>(i)] = static_cast<float>(std::cos(theta) * tab.attn_factor);
            sn[static_cast<size_t>(i)] = static_cast<float>(std::sin(theta) * tab.attn_factor);
        }
        for (int h = 0; h < n.n_head; ++h) {
            float* p = y + r * n.cols + static_cast<int64_t>(h) * n.head_dim + n.rope_offset;
            for (int i = 0; i < half; ++i) {
                const float x0 = p[2 * i], x1 = p[2 * i + 1];
                p[2 * i] = x0 * cs[static_cast<size_t>(i)] - x1 * sn[static_cast<size_t>(i)];
                p[2 * i + 1] = x0 * sn[static_cast<size_t>(i)] + x1 * cs[static_cast<size_t>(i)];
            }
        }
    }
}

void mla_attn(const Node& n, const float* q, const float* latent, const float* k_pe, float* cache,
              int64_t n_ctx, float* out, int n_threads, float* ctx_out) {
    const AttnParams& p = n.attn;
    const int64_t T = n.rows, width = p.kv_lora + p.qk_rope, qdim = p.qk_nope + p.qk_rope;
    if (p.pos0 < 0 || p.pos0 + T > n_ctx)
        throw Error("kv_cache", n.name + ": positions " + std::to_string(p.pos0) + ".." +
                                    std::to_string(p.pos0 + T - 1) + " exceed the context of " +
                                    std::to_string(n_ctx) + " tokens");
    // Cache row = [normalised latent (kv_lora) | roped k_pe (qk_rope)].
    for (int64_t t = 0; t < T; ++t) {
        float* row = cache + (p.pos0 + t) * width;
        std::memcpy(row, latent + t * p.kv_lora, static_cast<size_t>(p.kv_lora) * 4);
        std::memcpy(row + p.kv_lora, k_pe + t * p.qk_rope, static_cast<size_t>(p.qk_rope) * 4);
    }
    const Weight& k_b = *n.w[0];
    const Weight& v_b = *n.w[1];
    for (const Weight* w : {&k_b, &v_b})  // before the parallel region: no throwing inside it
        if (!weight_type_supported(w->type))
            throw Error("cpu", w->name + ": weight type " + std::string(type_traits(w->type).name) + " is not supported yet");
    const int64_t n_kv = p.pos0 + T;
    const bool parallel = p.n_head > 1 && p.n_head * T * n_kv * p.kv_lora >= kParallelMinWork;
#pragma omp parallel num_threads(threads_or_default(n_threads)) if (parallel)
    {
        std::vector<float> kb(static_cast<size_t>(p.kv_lora * p.qk_nope));  // [kv_lora][qk_nope]
        std::vector<float> vb(static_cast<size_t>(p.v_head * p.kv_lora));   // [v_head][kv_lora]
        std::vector<float> qa(static_cast<size_t>(p.kv_lora)), ctx(static_cast<size_t>(p.kv_lora));
        std::vector<float> score(static_cast<size_t>(n_kv));
#pragma omp for schedule(dynamic)
        for (int h = 0; h < p.n_head; ++h) {
            for (int j = 0; j < p.kv_lora; ++j) dequant_row(k_b.type, k_b.row(j, h), kb.data() + j * p.qk_nope, p.qk_nope);
            for (int i = 0; i < p.v_head; ++i) dequant_row(v_b.type, v_b.row(i, h), vb.data() + i * p.kv_lora, p.kv_lora);
            for (int64_t t = 0; t < T; ++t) {
                const float* qh = q + t * p.n_head * qdim + h * qdim;  // [qk_nope | qk_rope]
                // Absorb W_kb into the query: q_nope·(W_kb c) = (W_kbᵀ q_nope)·c.
                for (int j = 0; j < p.kv_lora; ++j) qa[static_cast<size_t>(j)] = dot_f32(kb.data() + j * p.qk_nope, qh, p.qk_nope);
                const int64_t n_vis = p.pos0 + t + 1;  // causal: keys at positions ≤ own
                float mx = -std::numeric_limits<float>::infinity();
                for (int64_t s = 0; s < n_vis; ++s) {
                    const float* row = cache + s * width;
                    float sc = dot_f32(qa.data(), row, p.kv_lora) + dot_f32(qh + p.qk_nope, row + p.kv_lora, p.qk_rope);
                    sc *= p.scale;
                    score[static_cast<size_t>(s)] = sc;
                    mx = std::max(mx, sc);
                }
                double sum = 0.0;
                for (int64_t s = 0; s < n_vis; ++s) {
                    float e = std::exp(score[static_cast<size_t>(s)] - mx);
                    score[static_cast<size_t>(s)] = e;
                    sum += e;
                }
                const float inv = static_cast<float>(1.0 / sum);
                std::fill(ctx.begin(), ctx.end(), 0.0f);
                for (int64_t s = 0; s < n_vis; ++s) {
                    const float a = score[static_cast<size_t>(s)] * inv;
                    const float* row = cache + s * width;
                    for (int j = 0; j < p.kv_lora; ++j) ctx[static_cast<size_t>(j)] += a * row[j];
                }
                if (ctx_out)
                    std::copy(ctx.begin(), ctx.end(), ctx_out + (t * p.n_head + h) * static_cast<int64_t>(p.kv_lora));
                // W_vb after attention: the attended latent back to v_head values.
                float* o = out + t * p.n_head * p.v_head + h * p.v_head;
                for (int i = 0; i < p.v_head; ++i) o[i] = dot_f32(vb.data() + i * p.kv_lora, ctx.data(), p.kv_lora);
            }
        }
    }
}

void moe_route(const Node& n, const float* x, float* out, int n_threads) {
    const RouteParams& p = n.route;
    const int64_t T = n.rows;
    const int E = p.n_expert, k = p.n_used, per_group = p.n_expert / p.n_group;
    std::vector<float> logits(static_cast<size_t>(T * E));
    matmul(*n.w[0], 0, x, T, logits.data(), n_threads);
    std::vector<float> bias(static_cast<size_t>(E), 0.0f);
    if (n.w.size() > 1) dequant_row(n.w[1]->type, n.w[1]->data, bias.data(), E);

    std::vector<float> score(static_cast<size_t>(E)), choice(static_cast<size_t>(E));
    std::vector<float> gscore(static_cast<size_t>(p.n_group));
    std::vector<int> order(static_cast<size_t>(E)), gorder(static_cast<size_t>(p.n_group));
    std::vector<uint8_t> gkeep(static_cast<size_t>(p.n_group));
    for (int64_t t = 0; t < T; ++t) {
        const float* lg = logits.data() + t * E;
        if (p.scoring == ScoringFunc::sigmoid) {
            for (int e = 0; e < E; ++e) score[static_cast<size_t>(e)] = 1.0f / (1.0f + std::exp(-lg[e]));
        } else {
            float mx = *std::max_element(lg, lg + E);
            double sum = 0.0;
            for (int e = 0; e < E; ++e) sum += (score[static_cast<size_t>(e)] = std::exp(lg[e] - mx));
            for (int e = 0; e < E; ++e) score[static_cast<size_t>(e)] = static_cast<float>(score[static_cast<size_t>(e)] / sum);
        }
        // The correction bias steers which experts are chosen, never their weights.
        for (int e = 0; e < E; ++e) choice[static_cast<size_t>(e)] = score[static_cast<size_t>(e)] + bias[static_cast<size_t>(e)];

        std::fill(gkeep.begin(), gkeep.end(), uint8_t{1});
        if (p.method != TopkMethod::greedy && p.topk_group < p.n_group) {
            for (int g = 0; g < p.n_group; ++g) {
                const float* c = choice.data() + g * per_group;
                if (p.method == TopkMethod::noaux_tc) {
                    // V3: a group's score is the sum of its two best (biased) scores.
                    float a = -std::numeric_limits<float>::infinity(), b = a;
                    for (int i = 0; i < per_group; ++i) {
                        if (c[i] > a) { b = a; a = c[i]; }
                        else if (c[i] > b) b = c[i];
                    }
                    gscore[static_cast<size_t>(g)] = a + b;
                } else {
                    gscore[static_cast<size_t>(g)] = *std::max_element(c, c + per_group);  // V2: the best one
                }
            }
            std::iota(gorder.begin(), gorder.end(), 0);
            std::stable_sort(gorder.begin(), gorder.end(), [&](int a, int b) {
                return gscore[static_cast<size_t>(a)] > gscore[static_cast<size_t>(b)];
            });
            std::fill(gkeep.begin(), gkeep.end(), uint8_t{0});
            for (int g = 0; g < p.topk_group; ++g) gkeep[static_cast<size_t>(gorder[static_cast<size_t>(g)])] = 1;
        }
        int n_cand = 0;
        for (int e = 0; e < E; ++e)
            if (gkeep[static_cast<size_t>(e / per_group)]) order[static_cast<size_t>(n_cand++)] = e;
        std::partial_sort(order.begin(), order.begin() + k, order.begin() + n_cand, [&](int a, int b) {
            float ca = choice[static_cast<size_t>(a)], cb = choice[static_cast<size_t>(b)];
            return ca > cb || (ca == cb && a < b);
        });

        float* o = out + t * 2 * k;
        double wsum = 0.0;
        for (int j = 0; j < k; ++j) {
            const int e = order[static_cast<size_t>(j)];
            o[j] = score[static_cast<size_t>(e)];
            o[k + j] = static_cast<float>(e);  // ids as floats: exact below 2^24
            wsum += o[j];
        }
        // V3 (sigmoid) normalises when asked and then always scales; V2 (softmax)
        // either normalises or scales, as the two reference implementations do.
        const bool norm = p.norm_topk && k > 1;
        const bool scale = p.scoring == ScoringFunc::sigmoid || !norm;
        for (int j = 0; j < k; ++j) {
            if (norm) o[j] = static_cast<float>(o[j] / (wsum + 1e-20));
            if (scale) o[j] *= p.scale;
        }
    }
}

void moe_ffn(const Node& n, const float* x, const float* route, float* out, int n_threads) {
    const int64_t T = n.rows, D = n.cols;
    const int k = n.route.n_used, E = n.route.n_expert;
    const Weight& gate = *n.w[0];
    const Weight& up = *n.w[1];
    const Weight& down = *n.w[2];
    const int64_t F = gate.ne[1];
    // Group the batch's (token, weight) pairs by expert, so each expert's weights are
    // read once per batch.
    std::vector<std::vector<std::pair<int64_t, float>>> by_expert(static_cast<size_t>(E));
    for (int64_t t = 0; t < T; ++t) {
        const float* r = route + t * 2 * k;
        for (int j = 0; j < k; ++j) {
            const int e = static_cast<int>(r[k + j]);
            if (e < 0 || e >= E) throw Error("cpu", n.name + ": expert id " + std::to_string(e) + " out of range");
            if (!n.experts.empty() && !n.experts[static_cast<size_t>(e)]) continue;
            by_expert[static_cast<size_t>(e)].push_back({t, r[j]});
        }
    }
    std::fill(out, out + T * D, 0.0f);
    std::vector<float> xe, g, u, d;
    for (int e = 0; e < E; ++e) {
        const auto& list = by_expert[static_cast<size_t>(e)];
        if (list.empty()) continue;
        const int64_t m = static_cast<int64_t>(list.size());
        xe.resize(static_cast<size_t>(m * D));
        g.resize(static_cast<size_t>(m * F));
        u.resize(static_cast<size_t>(m * F));
        d.resize(static_cast<size_t>(m * D));
        for (int64_t i = 0; i < m; ++i)
            std::memcpy(xe.data() + i * D, x + list[static_cast<size_t>(i)].first * D, static_cast<size_t>(D) * 4);
        matmul(gate, e, xe.data(), m, g.data(), n_threads);
        matmul(up, e, xe.data(), m, u.data(), n_threads);
        swiglu(g.data(), u.data(), m * F, g.data());
        matmul(down, e, g.data(), m, d.data(), n_threads);
        for (int64_t i = 0; i < m; ++i) {
            const auto [t, wt] = list[static_cast<size_t>(i)];
            float* o = out + t * D;
            const float* di = d.data() + i * D;
            for (int64_t c = 0; c < D; ++c) o[c] += wt * di[c];
        }
    }
}

void shared_ffn(const Node& n, const float* x, float* out, int n_threads) {
    const int64_t T = n.rows, F = n.w[0]->ne[1];
    std::vector<float> g(static_cast<size_t>(T * F)), u(static_cast<size_t>(T * F));
    matmul(*n.w[0], 0, x, T, g.data(), n_threads);
    matmul(*n.w[1], 0, x, T, u.data(), n_threads);
    swiglu(g.data(), u.data(), T * F, g.data());
    matmul(*n.w[2], 0, g.data(), T, out, n_threads);
}

}  // namespace ds3::cpu
