#include "convert/synth.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "convert/hf_config.h"
#include "convert/mapping.h"
#include "convert/safetensors_writer.h"
#include "models/presets.h"
#include "quantize/float.h"
#include "runtime/rng.h"
#include "runtime/error.h"

namespace ds3::hf {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

[[noreturn]] void fail(const std::string& msg) { throw Error("synth", msg); }

using Rng = SplitMix64;

// Nearest e4m3 code of a value already scaled into [-448, 448].
struct Fp8Encoder {
    std::vector<std::pair<float, uint8_t>> pos;  // non-negative finite codes, sorted
    Fp8Encoder() {
        for (int c = 0; c < 0x7f; ++c) pos.emplace_back(fp8_e4m3_to_f32(static_cast<uint8_t>(c)), static_cast<uint8_t>(c));
        std::sort(pos.begin(), pos.end());
    }
    uint8_t encode(float v) const {
        const float a = std::min(std::fabs(v), 448.0f);
        auto it = std::lower_bound(pos.begin(), pos.end(), std::make_pair(a, uint8_t{0}));
        if (it == pos.end()) it = pos.end() - 1;
        if (it != pos.begin() && a - (it - 1)->first <= it->first - a) --it;
        return static_cast<uint8_t>(it->second | (v < 0 && it->second ? 0x80 : 0));
    }
};

enum class Kind { Fp8, Bf16Norm, Bf16, F32Bias };

struct Item {
    StDecl decl;
    Kind kind;
    std::string weight_of;  // for a scale: the FP8 weight it scales
};

void put_u16(std::vector<uint8_t>& out, size_t i, uint16_t v) {
    out[2 * i] = static_cast<uint8_t>(v);
    out[2 * i + 1] = static_cast<uint8_t>(v >> 8);
}

// One FP8 weight [rows, cols] and its block scales, from values uniform in +-1/sqrt(cols).
// Each block's scale is a power of two, as in the fixtures, so the f32 / bf16 forms of the
// weight hold exactly the same numbers.
void make_fp8(Rng& rng, const Fp8Encoder& enc, uint64_t rows, uint64_t cols, std::vector<uint8_t>& w,
              std::vector<uint8_t>& sc) {
    const uint64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
    const float a = 1.0f / std::sqrt(static_cast<float>(cols));
    std::vector<float> v(rows * cols);
    for (float& x : v) x = rng.uniform(a);
    std::vector<float> scales(br * bc);
    for (uint64_t bi = 0; bi < br; ++bi)
        for (uint64_t bj = 0; bj < bc; ++bj) {
            float amax = 0;
            for (uint64_t r = bi * 128; r < std::min(rows, bi * 128 + 128); ++r)
                for (uint64_t c = bj * 128; c < std::min(cols, bj * 128 + 128); ++c) amax = std::max(amax, std::fabs(v[r * cols + c]));
            scales[bi * bc + bj] = amax > 0 ? std::exp2(std::ceil(std::log2(amax / 448.0f))) : 1.0f;
        }
    w.resize(rows * cols);
    for (uint64_t r = 0; r < rows; ++r)
        for (uint64_t c = 0; c < cols; ++c)
            w[r * cols + c] = enc.encode(v[r * cols + c] / scales[(r / 128) * bc + c / 128]);
    sc.resize(scales.size() * 4);
    std::copy_n(reinterpret_cast<const uint8_t*>(scales.data()), sc.size(), sc.data());
}

void copy_file_or_fail(const fs::path& from, const fs::path& to) {
    std::error_code ec;
    fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
    if (ec) fail("cannot copy " + from.string() + " to " + to.string() + ": " + ec.message());
}

void write_text(const fs::path& p, const std::string& s) {
    std::ofstream out(p, std::ios::binary);
    out << s;
    if (!out) fail("cannot write " + p.string());
}

}  // namespace

// The presets are the one table of models/presets.h.
const std::vector<SynthPreset>& synth_presets() {
    static const std::vector<SynthPreset> p = [] {
        std::vector<SynthPreset> v;
        for (const ModelPreset& m : model_presets()) v.push_back({m.name, m.description, m.config_json, m.n_shards});
        return v;
    }();
    return p;
}

const SynthPreset* find_synth_preset(const std::string& name) {
    for (const SynthPreset& p : synth_presets())
        if (p.name == name) return &p;
    return nullptr;
}

SynthStats synth(const SynthOptions& opts) {
    const SynthPreset* preset = find_synth_preset(opts.preset);
    if (!preset) {
        std::string names;
        for (const SynthPreset& p : synth_presets()) names += (names.empty() ? "" : ", ") + p.name;
        fail("unknown preset '" + opts.preset + "' (known: " + names + ")");
    }
    json config = json::parse(preset->config_json);
    if (opts.layers > 0) config["num_hidden_layers"] = opts.layers;
    const HfConfig cfg = parse_config(config.dump(), "preset " + preset->name);
    const fs::path dir(opts.out_dir);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec || !fs::is_directory(dir)) fail("cannot create directory " + dir.string() + (ec ? ": " + ec.message() : ""));

    // Which HF tensors, in the mapping table's order; kv_b_proj appears twice there.
    std::vector<Item> items;
    for (const TensorPlan& p : plan_tensors(cfg)) {
        if (p.source == Source::KvbV) continue;
        for (const std::string& n : p.hf_names) {
            const bool linear = p.role == Role::Matrix &&
                                (n.find(".self_attn.") != std::string::npos || n.find(".mlp.") != std::string::npos);
            if (linear) {
                items.push_back({{n, DType::F8_E4M3, p.hf_shape}, Kind::Fp8, ""});
                items.push_back({{n + "_scale_inv", DType::F32, {(p.hf_shape[0] + 127) / 128, (p.hf_shape[1] + 127) / 128}},
                                 Kind::Fp8, n});
            } else if (p.role == Role::Bias) {
                items.push_back({{n, DType::F32, p.hf_shape}, Kind::F32Bias, ""});
            } else {
                items.push_back({{n, DType::BF16, p.hf_shape}, p.role == Role::Norm ? Kind::Bf16Norm : Kind::Bf16, ""});
            }
        }
    }

    // Split into shards of about equal size, keeping a weight and its scale together.
    uint64_t total = 0;
    for (const Item& it : items) total += decl_nbytes(it.decl);
    const uint32_t n_shards = std::max<uint32_t>(1, preset->n_shards);
    std::vector<std::vector<size_t>> shards(n_shards);
    uint64_t acc = 0;
    size_t shard_of_last = 0;
    for (size_t i = 0; i < items.size(); ++i) {
        if (items[i].weight_of.empty())
            shard_of_last = std::min<size_t>(n_shards - 1, static_cast<size_t>(acc * n_shards / std::max<uint64_t>(total, 1)));
        shards[shard_of_last].push_back(i);
        acc += decl_nbytes(items[i].decl);
    }

    Rng rng{opts.seed * 0x2545f4914f6cdd1dull + 0x1234567ull};
    const Fp8Encoder enc;
    json weight_map = json::object();
    SynthStats stats;
    std::vector<uint8_t> pending_scale;  // made together with its weight
    for (uint32_t s = 0; s < n_shards; ++s) {
        char fname[64];
        std::snprintf(fname, sizeof fname, "model-%05u-of-%05u.safetensors", s + 1, n_shards);
        std::vector<StDecl> decls;
        for (size_t i : shards[s]) decls.push_back(items[i].decl);
        SafetensorsWriter w((dir / fname).string(), decls, {{"format", "pt"}});
        std::vector<uint8_t> bytes;
        for (size_t i : shards[s]) {
            const Item& it = items[i];
            const uint64_t n = decl_nbytes(it.decl) / dtype_size(it.decl.dtype);
            if (it.kind == Kind::Fp8 && it.weight_of.empty()) {
                make_fp8(rng, enc, it.decl.shape[0], it.decl.shape[1], bytes, pending_scale);
            } else if (it.kind == Kind::Fp8) {
                bytes = std::move(pending_scale);
            } else if (it.kind == Kind::F32Bias) {
                std::vector<float> v(n);
                for (float& x : v) x = rng.uniform(0.05f);
                bytes.assign(reinterpret_cast<const uint8_t*>(v.data()), reinterpret_cast<const uint8_t*>(v.data()) + n * 4);
            } else {
                bytes.assign(n * 2, 0);
                const uint64_t cols = it.decl.shape.size() > 1 ? it.decl.shape[1] : 1;
                const float a = it.kind == Kind::Bf16Norm ? 0.1f : 1.0f / std::sqrt(static_cast<float>(cols));
                for (uint64_t k = 0; k < n; ++k)
                    put_u16(bytes, k, f32_to_bf16((it.kind == Kind::Bf16Norm ? 1.0f : 0.0f) + rng.uniform(a)));
            }
            w.write(bytes);
            weight_map[it.decl.name] = fname;
            ++stats.n_tensors;
        }
        w.finish();
    }
    stats.bytes = total;

    json index;
    index["metadata"] = {{"total_size", total}};
    json sorted = json::object();
    std::vector<std::string> names;
    for (auto& [k, _] : weight_map.items()) names.push_back(k);
    std::sort(names.begin(), names.end());
    for (const std::string& k : names) sorted[k] = weight_map[k];
    index["weight_map"] = sorted;
    write_text(dir / "model.safetensors.index.json", index.dump(2) + "\n");
    write_text(dir / "config.json", config.dump(2) + "\n");
    json gen = {{"_from_model_config", true}, {"do_sample", true}, {"temperature", 0.6}, {"top_p", 0.95}};
    if (cfg.bos_token_id) gen["bos_token_id"] = *cfg.bos_token_id;
    if (cfg.eos_token_id) gen["eos_token_id"] = *cfg.eos_token_id;
    write_text(dir / "generation_config.json", gen.dump(2) + "\n");

    if (!opts.tokenizer_dir.empty()) {
        const fs::path td(opts.tokenizer_dir);
        if (!fs::is_regular_file(td / "tokenizer.json")) fail(td.string() + ": no tokenizer.json to copy");
        copy_file_or_fail(td / "tokenizer.json", dir / "tokenizer.json");
        if (fs::is_regular_file(td / "tokenizer_config.json"))
            copy_file_or_fail(td / "tokenizer_config.json", dir / "tokenizer_config.json");
    }
    return stats;
}

}  // namespace ds3::hf
