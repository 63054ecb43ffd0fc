#include "convert/convert.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <set>

#include "convert/hf_checkpoint.h"
#include "convert/hf_tokenizer.h"
#include "convert/mapping.h"
#include "quantize/formats.h"
#include "quantize/imatrix.h"
#include "quantize/quantize_model.h"
#include "quantize/float.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/tokenizer_data.h"

namespace ds3::hf {

namespace {

namespace fs = std::filesystem;
using gguf::Value;

// Elements per streamed chunk: 4 Mi floats (16 MiB) keeps the buffers small next to any
// real tensor while each write is still large.
constexpr uint64_t kChunkElems = uint64_t{4} << 20;

[[noreturn]] void fail(const std::string& msg) { throw Error("convert", msg); }

std::string shape_str(const std::vector<uint64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
}

Value u32(uint64_t v, const char* what) {
    if (v > std::numeric_limits<uint32_t>::max()) fail(std::string(what) + " " + std::to_string(v) + " exceeds 32 bits");
    return Value::u32(static_cast<uint32_t>(v));
}

// f32 values (whole rows of row_len) -> the bytes of `type` (out is overwritten).
// importance: row_len per-column weights for every row, or nullptr.
void encode(std::span<const float> in, TypeId type, uint64_t row_len, const float* importance,
            std::vector<uint8_t>& out) {
    switch (type) {
    case TypeId::F32:
        out.resize(in.size() * 4);
        std::copy_n(reinterpret_cast<const uint8_t*>(in.data()), out.size(), out.data());
        return;
    case TypeId::BF16:
        out.resize(in.size() * 2);
        for (size_t i = 0; i < in.size(); ++i) {
            const uint16_t h = f32_to_bf16(in[i]);
            out[2 * i] = static_cast<uint8_t>(h);
            out[2 * i + 1] = static_cast<uint8_t>(h >> 8);
        }
        return;
    case TypeId::F16:
        out.resize(in.size() * 2);
        for (size_t i = 0; i < in.size(); ++i) {
            const uint16_t h = f32_to_f16(in[i]);
            out[2 * i] = static_cast<uint8_t>(h);
            out[2 * i + 1] = static_cast<uint8_t>(h >> 8);
        }
        return;
    default: {
        // Quantized: whole rows of row_len, quantised on all threads.
        const uint64_t rb = *type_nbytes(type, row_len);
        const uint64_t n_rows = in.size() / row_len;
        out.resize(n_rows * rb);
        std::vector<const float*> row_imp;
        if (importance) row_imp.assign(n_rows, importance);
        quant::quantize_rows(type, in.data(), out.data(), static_cast<int64_t>(n_rows), static_cast<int64_t>(row_len),
                             row_imp, 0);
        return;
    }
    }
}

// Streams one planned tensor into the writer (between begin_tensor and end_tensor).
class TensorStreamer {
public:
    TensorStreamer(Checkpoint& ck, gguf::Writer& w, Progress& prog, const quant::Imatrix* im)
        : ck_(ck), w_(w), prog_(prog), im_(im) {}

    void write(const TensorPlan& p, TypeId type, const HfConfig& c) {
        type_ = type;
        row_len_ = p.ne.empty() ? 1 : p.ne[0];
        // The same condition as quantize_model: quantized matrices only.
        name_ = p.gguf_name;
        use_im_ = im_ && type_traits(type).quantized && p.ne.size() >= 2;
        mat_ = 0;
        imp_mat_ = -1;
        w_.begin_tensor();
        if (type == TypeId::FP8_E4M3_B128 && fp8_keep(p, c)) {
            w_.end_tensor();
            return;
        }
        switch (p.source) {
        case Source::Direct:
            rows(p.hf_names[0], 0, p.hf_shape.empty() ? 1 : p.hf_shape[0]);
            break;
        case Source::ExpertStack:
            // Expert by expert: never more than a chunk of one expert in memory (and
            // one importance vector, the expert's, per chunk).
            for (const std::string& n : p.hf_names) {
                rows(n, 0, p.hf_shape[0]);
                ++mat_;
            }
            break;
        case Source::KvbK: {
            // Head h's k rows [nope][kv_lora] are stored transposed, [kv_lora][nope], so that
            // ne = [qk_nope, kv_lora, n_head].
            const uint64_t nope = c.qk_nope_head_dim, kvl = c.kv_lora_rank, per = nope + c.v_head_dim;
            std::vector<float> tr(nope * kvl);
            for (uint64_t h = 0; h < c.num_attention_heads; ++h) {
                buf_.resize(nope * kvl);
                ck_.read_rows_f32(p.hf_names[0], h * per, nope, buf_);
                for (uint64_t i = 0; i < nope; ++i)
                    for (uint64_t j = 0; j < kvl; ++j) tr[j * nope + i] = buf_[i * kvl + j];
                mat_ = static_cast<int64_t>(h);
                emit(tr);
            }
            break;
        }
        case Source::KvbV: {
            // Head h's v rows [v_head][kv_lora] as they are: ne = [kv_lora, v_head, n_head].
            const uint64_t nope = c.qk_nope_head_dim, per = nope + c.v_head_dim;
            for (uint64_t h = 0; h < c.num_attention_heads; ++h) {
                mat_ = static_cast<int64_t>(h);
                rows(p.hf_names[0], h * per + nope, c.v_head_dim);
            }
            break;
        }
        }
        w_.end_tensor();
    }

private:
    void rows(const std::string& name, uint64_t row0, uint64_t n_rows) {
        const uint64_t rs = row_size(ck_.tensor(name).shape);
        const uint64_t step = std::max<uint64_t>(1, kChunkElems / std::max<uint64_t>(rs, 1));
        for (uint64_t r = 0; r < n_rows; r += step) {
            const uint64_t n = std::min(step, n_rows - r);
            buf_.resize(n * rs);
            ck_.read_rows_f32(name, row0 + r, n, buf_);
            emit(buf_);
        }
    }
    void emit(std::span<const float> v) {
        const float* imp = nullptr;
        if (use_im_) {
            if (mat_ != imp_mat_) {
                imp_ok_ = im_->importance(name_, mat_, static_cast<int64_t>(row_len_), imp_);
                imp_mat_ = mat_;
            }
            if (imp_ok_) imp = imp_.data();
        }
        encode(v, type_, row_len_, imp, bytes_);
        w_.write_chunk(bytes_);
        prog_.add(bytes_.size());
    }

    // FP8 release -> FP8_E4M3_B128 without requantising: each 128-element block of an
    // output row takes the release's e4m3 bytes and the scale_inv of the 128x128 tile
    // that holds them. Possible when every source is F8_E4M3 in 128x128 tiles and each
    // output block lies in one tile (kv_b's per-head transposition needs
    // qk_nope + v_head to be a multiple of 128); false (nothing written) otherwise, and
    // the caller quantises from f32 instead.
    bool fp8_keep(const TensorPlan& p, const HfConfig& c) {
        if (!c.quantization_config || c.quantization_config->block_out != 128 || c.quantization_config->block_in != 128)
            return false;
        for (const std::string& n : p.hf_names)
            if (ck_.tensor(n).dtype != DType::F8_E4M3 || ck_.tensor(n).shape.size() != 2) return false;
        const uint64_t blk = 128;
        if (row_len_ % blk) return false;
        const uint64_t per = c.qk_nope_head_dim + c.v_head_dim;
        if (p.source == Source::KvbK && per % blk) return false;
        std::vector<uint8_t> gathered(row_len_);
        std::vector<float> tile(row_len_ / blk);
        const uint64_t orb = *type_nbytes(TypeId::FP8_E4M3_B128, row_len_);
        // One source row (HF row `row` of tensor n, all of it) per output row.
        auto rows_of = [&](const std::string& n, uint64_t row0, uint64_t n_rows) {
            const StTensor& t = ck_.tensor(n);
            const std::vector<float> sc = ck_.read_f32(n + "_scale_inv");
            const uint64_t cols = t.shape[1], sc_cols = (cols + blk - 1) / blk;
            for (uint64_t r = row0; r < row0 + n_rows;) {
                const uint64_t n_chunk = std::min<uint64_t>(row0 + n_rows - r, std::max<uint64_t>(1, kChunkElems / cols));
                bytes_.resize(n_chunk * orb);
                for (uint64_t i = 0; i < n_chunk; ++i) {
                    const float* srow = sc.data() + ((r + i) / blk) * sc_cols;
                    quant::fp8_b128_pack_row(t.data.data() + (r + i) * cols, srow, bytes_.data() + i * orb,
                                             static_cast<int64_t>(cols));
                }
                w_.write_chunk(bytes_);
                prog_.add(bytes_.size());
                r += n_chunk;
            }
        };
        switch (p.source) {
        case Source::Direct:
            rows_of(p.hf_names[0], 0, ck_.tensor(p.hf_names[0]).shape[0]);
            return true;
        case Source::ExpertStack:
            for (const std::string& n : p.hf_names) rows_of(n, 0, ck_.tensor(n).shape[0]);
            return true;
        case Source::KvbV: {
            const uint64_t nope = c.qk_nope_head_dim;
            for (uint64_t h = 0; h < c.num_attention_heads; ++h) rows_of(p.hf_names[0], h * per + nope, c.v_head_dim);
            return true;
        }
        case Source::KvbK: {
            // Output row j of head h = column j of the head's k rows (transposed).
            const std::string& n = p.hf_names[0];
            const StTensor& t = ck_.tensor(n);
            const std::vector<float> sc = ck_.read_f32(n + "_scale_inv");
            const uint64_t kvl = t.shape[1], sc_cols = (kvl + blk - 1) / blk, nope = c.qk_nope_head_dim;
            bytes_.resize(kvl * orb);
            for (uint64_t h = 0; h < c.num_attention_heads; ++h) {
                for (uint64_t j = 0; j < kvl; ++j) {
                    for (uint64_t i = 0; i < nope; ++i) gathered[i] = t.data[(h * per + i) * kvl + j];
                    for (uint64_t b = 0; b < nope / blk; ++b) tile[b] = sc[((h * per + b * blk) / blk) * sc_cols + j / blk];
                    quant::fp8_b128_pack_row(gathered.data(), tile.data(), bytes_.data() + j * orb,
                                             static_cast<int64_t>(nope));
                }
                w_.write_chunk(bytes_);
                prog_.add(bytes_.size());
            }
            return true;
        }
        }
        return false;
    }

    Checkpoint& ck_;
    gguf::Writer& w_;
    Progress& prog_;
    const quant::Imatrix* im_;
    TypeId type_ = TypeId::F32;
    uint64_t row_len_ = 1;
    // Importance of the current matrix (an expert of a stack, a head of attn_k_b/v_b).
    std::string name_;
    bool use_im_ = false, imp_ok_ = false;
    int64_t mat_ = 0, imp_mat_ = -1;
    std::vector<float> imp_;
    std::vector<float> buf_;
    std::vector<uint8_t> bytes_;
};

std::string lower(std::string_view s) {
    std::string r(s);
    for (char& ch : r) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    return r;
}

}  // namespace

std::optional<OutType> outtype_from_name(std::string_view name) {
    const std::string n = lower(name);
    if (n == "f32") return OutType::F32;
    if (n == "bf16") return OutType::BF16;
    if (n == "f16") return OutType::F16;
    return std::nullopt;
}

std::string_view outtype_name(OutType t) {
    switch (t) {
    case OutType::F32: return "f32";
    case OutType::BF16: return "bf16";
    case OutType::F16: return "f16";
    }
    return "?";
}

TypeId outtype_type(OutType t) {
    switch (t) {
    case OutType::F32: return TypeId::F32;
    case OutType::BF16: return TypeId::BF16;
    case OutType::F16: return TypeId::F16;
    }
    return TypeId::F32;
}

uint32_t outtype_file_type(OutType t) {
    switch (t) {
    case OutType::F32: return 0;
    case OutType::F16: return 1;
    case OutType::BF16: return 32;
    }
    return 0;
}

void write_model_metadata(gguf::Writer& w, const HfConfig& c, const std::optional<GenerationConfig>& gen,
                          OutType outtype, const std::string& name, const std::string& source_dtype) {
    const std::string a = "deepseek2.";
    w.set_kv("general.architecture", Value::str("deepseek2"));
    w.set_kv("general.name", Value::str(name));
    w.set_kv("general.file_type", Value::u32(outtype_file_type(outtype)));
    w.set_kv("general.quantization_version", Value::u32(2));

    // The main blocks plus the MTP blocks, as llama.cpp counts them for NextN models.
    w.set_kv(a + "block_count", u32(c.n_layers_total(), "block_count"));
    w.set_kv(a + "context_length", u32(c.max_position_embeddings, "context_length"));
    w.set_kv(a + "embedding_length", u32(c.hidden_size, "embedding_length"));
    w.set_kv(a + "feed_forward_length", u32(c.intermediate_size, "feed_forward_length"));
    w.set_kv(a + "vocab_size", u32(c.vocab_size, "vocab_size"));
    // MLA as llama.cpp stores it: one latent "KV head" of kv_lora + rope, value = latent.
    w.set_kv(a + "attention.head_count", u32(c.num_attention_heads, "head_count"));
    w.set_kv(a + "attention.head_count_kv", Value::u32(1));
    w.set_kv(a + "attention.key_length", u32(c.kv_lora_rank + c.qk_rope_head_dim, "key_length"));
    w.set_kv(a + "attention.value_length", u32(c.kv_lora_rank, "value_length"));
    w.set_kv(a + "attention.key_length_mla", u32(c.qk_head_dim(), "key_length_mla"));
    w.set_kv(a + "attention.value_length_mla", u32(c.v_head_dim, "value_length_mla"));
    if (c.q_lora_rank) w.set_kv(a + "attention.q_lora_rank", u32(*c.q_lora_rank, "q_lora_rank"));
    w.set_kv(a + "attention.kv_lora_rank", u32(c.kv_lora_rank, "kv_lora_rank"));
    w.set_kv(a + "attention.layer_norm_rms_epsilon", Value::f32(static_cast<float>(c.rms_norm_eps)));
    w.set_kv(a + "rope.freq_base", Value::f32(static_cast<float>(c.rope_theta)));
    w.set_kv(a + "rope.dimension_count", u32(c.qk_rope_head_dim, "rope.dimension_count"));
    if (c.rope_scaling) {
        const RopeScaling& r = *c.rope_scaling;
        w.set_kv(a + "rope.scaling.type", Value::str(r.type));
        w.set_kv(a + "rope.scaling.factor", Value::f32(static_cast<float>(r.factor)));
        w.set_kv(a + "rope.scaling.original_context_length",
                 u32(r.original_max_position_embeddings, "original_max_position_embeddings"));
        w.set_kv(a + "rope.scaling.yarn_beta_fast", Value::f32(static_cast<float>(r.beta_fast)));
        w.set_kv(a + "rope.scaling.yarn_beta_slow", Value::f32(static_cast<float>(r.beta_slow)));
        // llama.cpp's deepseek2 convention: 0.1 * mscale_all_dim, written only when the
        // config has mscale_all_dim ([TAG_DEEPSEEK2_YARN_LOG_MUL_FIX] there).
        if (r.mscale_all_dim != 0.0)
            w.set_kv(a + "rope.scaling.yarn_log_multiplier", Value::f32(static_cast<float>(0.1 * r.mscale_all_dim)));
    }
    w.set_kv(a + "leading_dense_block_count", u32(std::min(c.first_k_dense_replace, c.n_layers_total()),
                                                  "leading_dense_block_count"));
    w.set_kv(a + "expert_count", u32(c.n_routed_experts, "expert_count"));
    w.set_kv(a + "expert_used_count", u32(c.num_experts_per_tok, "expert_used_count"));
    w.set_kv(a + "expert_shared_count", u32(c.n_shared_experts, "expert_shared_count"));
    w.set_kv(a + "expert_feed_forward_length", u32(c.moe_intermediate_size, "expert_feed_forward_length"));
    w.set_kv(a + "expert_weights_scale", Value::f32(static_cast<float>(c.routed_scaling_factor)));
    w.set_kv(a + "expert_weights_norm", Value::boolean(c.norm_topk_prob));
    w.set_kv(a + "expert_gating_func", Value::u32(c.scoring_func == "sigmoid" ? 2 : 1));  // llama.cpp: 1 softmax, 2 sigmoid
    w.set_kv(a + "expert_group_count", u32(c.n_group, "expert_group_count"));
    w.set_kv(a + "expert_group_used_count", u32(c.topk_group, "expert_group_used_count"));
    w.set_kv(a + "nextn_predict_layers", u32(c.num_nextn_predict_layers, "nextn_predict_layers"));

    // What llama.cpp has no key for.
    w.set_kv("ds3.topk_method", Value::str(c.topk_method));
    w.set_kv("ds3.scoring_func", Value::str(c.scoring_func));
    w.set_kv("ds3.moe_layer_freq", u32(c.moe_layer_freq, "moe_layer_freq"));
    if (c.rope_scaling) {
        const RopeScaling& r = *c.rope_scaling;
        w.set_kv("ds3.rope.scaling.mscale", Value::f32(static_cast<float>(r.mscale)));
        w.set_kv("ds3.rope.scaling.mscale_all_dim", Value::f32(static_cast<float>(r.mscale_all_dim)));
        w.set_kv("ds3.rope.scaling.beta_fast", Value::f32(static_cast<float>(r.beta_fast)));
        w.set_kv("ds3.rope.scaling.beta_slow", Value::f32(static_cast<float>(r.beta_slow)));
    }
    w.set_kv("ds3.source", Value::str("hf:" + (c.model_type.empty() ? std::string(c.family == Family::V2 ? "deepseek_v2" : "deepseek_v3")
                                                                      : c.model_type) +
                                      " " + source_dtype));
    if (gen) {
        if (gen->temperature) w.set_kv("ds3.generation.temperature", Value::f32(static_cast<float>(*gen->temperature)));
        if (gen->top_p) w.set_kv("ds3.generation.top_p", Value::f32(static_cast<float>(*gen->top_p)));
        if (gen->top_k) w.set_kv("ds3.generation.top_k", Value::i32(static_cast<int32_t>(*gen->top_k)));
        if (gen->do_sample) w.set_kv("ds3.generation.do_sample", Value::boolean(*gen->do_sample));
    }
}

ConvertStats convert(const std::string& hf_dir, const std::string& out_path, const ConvertOptions& opts) {
    if (opts.imatrix && !opts.target)
        fail("an importance matrix needs a quantized --outtype (a mix or type such as Q4_K_M), not " +
             std::string(outtype_name(opts.outtype)));
    const HfConfig cfg = read_config(hf_dir);
    const std::optional<GenerationConfig> gen = read_generation_config(hf_dir);
    Checkpoint ck = Checkpoint::open(hf_dir);
    if (cfg.quantization_config) ck.set_fp8_block(cfg.quantization_config->block_out, cfg.quantization_config->block_in);

    // Plan and check every tensor against the config before the output exists.
    const std::vector<TensorPlan> plan = plan_tensors(cfg);
    std::set<std::string> used;
    std::string source_dtype;
    for (const TensorPlan& p : plan) {
        for (const std::string& n : p.hf_names) {
            if (!ck.has(n)) fail(hf_dir + ": tensor " + n + " (for " + p.gguf_name + ") is missing from the release");
            const StTensor& t = ck.tensor(n);
            if (t.shape != p.hf_shape)
                fail(ck.file_of(n) + ": tensor " + n + ": shape " + shape_str(t.shape) + " but config.json implies " +
                     shape_str(p.hf_shape));
            switch (t.dtype) {
            case DType::F8_E4M3:
                if (!ck.has(n + "_scale_inv"))
                    fail(ck.file_of(n) + ": tensor " + n + " is F8_E4M3 but " + n + "_scale_inv is missing");
                used.insert(n + "_scale_inv");
                break;
            case DType::BF16: case DType::F16: case DType::F32: case DType::F64:
                break;
            default:
                fail(ck.file_of(n) + ": tensor " + n + ": dtype " + std::string(dtype_name(t.dtype)) +
                     " is not a float type");
            }
            if (p.role == Role::Matrix && source_dtype.empty()) source_dtype = lower(dtype_name(t.dtype));
            used.insert(n);
        }
    }
    if (source_dtype == "f8_e4m3") source_dtype = "fp8";
    for (const std::string& n : ck.names())
        if (!used.count(n) && !is_ignorable_hf_tensor(n))
            fail(ck.file_of(n) + ": tensor " + n + " has no place in a " + cfg.model_type + " model with " +
                 std::to_string(cfg.num_hidden_layers) + " layers and " + std::to_string(cfg.num_nextn_predict_layers) +
                 " MTP layers (config.json)");

    // One per-tensor choice for every output type (quantize/mixes.h): the float
    // outtypes are plain targets that keep embeddings, norms, router and biases F32.
    const quant::Target target = opts.target ? *opts.target : *quant::parse_target(outtype_name(opts.outtype));
    std::vector<TypeId> types;
    for (const TensorPlan& p : plan)
        types.push_back(quant::choose_type(target, p.gguf_name, p.ne, static_cast<int64_t>(cfg.n_layers_total())).type);
    std::string name = opts.name;
    if (name.empty()) name = fs::path(hf_dir).lexically_normal().filename().string();
    if (name.empty()) name = fs::path(hf_dir).lexically_normal().parent_path().filename().string();

    gguf::Writer w(out_path);
    write_model_metadata(w, cfg, gen, opts.outtype, name, source_dtype);
    if (opts.tokenizer && fs::exists(fs::path(hf_dir) / "tokenizer.json")) write_tokenizer(w, read_tokenizer_dir(hf_dir));
    if (opts.target) {
        // As `ds3 quantize` writes them, so a one-pass file equals convert-then-quantize.
        w.set_kv("general.file_type", Value::u32(target.file_type));
        w.set_kv("ds3.quantize.type", Value::str(target.name));
        if (opts.imatrix) {
            // llama.cpp's keys, as quantize_model writes them.
            w.set_kv("quantize.imatrix.file", Value::str(fs::path(opts.imatrix_path).filename().string()));
            w.set_kv("quantize.imatrix.dataset", Value::str(opts.imatrix->dataset));
            w.set_kv("quantize.imatrix.entries_count", Value::i32(static_cast<int32_t>(opts.imatrix->entries.size())));
            w.set_kv("quantize.imatrix.chunks_count", Value::i32(static_cast<int32_t>(opts.imatrix->chunk_count)));
        }
    }

    uint64_t total = 0;
    for (size_t i = 0; i < plan.size(); ++i) {
        const TensorPlan& p = plan[i];
        w.add_tensor(p.gguf_name, p.ne, types[i]);
        total += w.tensors().back().nbytes;
    }
    w.write_header();

    Progress prog("convert", total, opts.progress);
    TensorStreamer st(ck, w, prog, opts.imatrix);
    for (size_t i = 0; i < plan.size(); ++i) {
        const TensorPlan& p = plan[i];
        prog.set_detail(p.gguf_name);
        st.write(p, types[i], cfg);
        if (opts.on_tensor) opts.on_tensor(i, plan.size(), p.gguf_name);
    }
    w.finish();
    prog.finish();

    ConvertStats s;
    s.n_tensors = plan.size();
    s.bytes = fs::file_size(out_path);
    s.seconds = prog.elapsed_s();
    return s;
}

}  // namespace ds3::hf
