#include "quantize/mixes.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "runtime/error.h"

namespace ds3::quant {

namespace {

std::string lower(std::string_view s) {
    std::string r(s);
    for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return r;
}

bool has(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }
bool ends(std::string_view s, std::string_view suf) {
    return s.size() >= suf.size() && s.substr(s.size() - suf.size()) == suf;
}

// llama.cpp's LLAMA_FTYPE_* values (llama.h): the mixes' own, and for plain types the
// "mostly X" one that names them.
constexpr uint32_t kFtypeAllF32 = 0, kFtypeF16 = 1, kFtypeQ4_0 = 2, kFtypeQ8_0 = 7, kFtypeQ2_K = 10,
                   kFtypeQ3_K_S = 11, kFtypeQ3_K_M = 12, kFtypeQ4_K_S = 14, kFtypeQ4_K_M = 15, kFtypeQ5_K_S = 16,
                   kFtypeQ5_K_M = 17, kFtypeQ6_K = 18, kFtypeIQ4_XS = 30, kFtypeBF16 = 32,
                   kFtypeGuessed = 1024;  // no llama.cpp ftype: our private FP8

struct Named {
    const char* name;
    Mix mix;
    TypeId type;
    uint32_t file_type;
};
constexpr Named kTargets[] = {
    {"Q8_0", Mix::Q8_0, TypeId::Q8_0, kFtypeQ8_0},
    {"Q6_K", Mix::Q6_K, TypeId::Q6_K, kFtypeQ6_K},
    {"Q5_K_M", Mix::Q5_K_M, TypeId::Q5_K, kFtypeQ5_K_M},
    {"Q4_K_M", Mix::Q4_K_M, TypeId::Q4_K, kFtypeQ4_K_M},
    {"Q3_K_M", Mix::Q3_K_M, TypeId::Q3_K, kFtypeQ3_K_M},
    {"Q2_K", Mix::Q2_K, TypeId::Q2_K, kFtypeQ2_K},
    {"f32", Mix::None, TypeId::F32, kFtypeAllF32},
    {"f16", Mix::None, TypeId::F16, kFtypeF16},
    {"bf16", Mix::None, TypeId::BF16, kFtypeBF16},
    {"q4_0", Mix::None, TypeId::Q4_0, kFtypeQ4_0},
    {"q3_K", Mix::None, TypeId::Q3_K, kFtypeQ3_K_S},
    {"q4_K", Mix::None, TypeId::Q4_K, kFtypeQ4_K_S},
    {"q5_K", Mix::None, TypeId::Q5_K, kFtypeQ5_K_S},
    {"iq4_xs", Mix::None, TypeId::IQ4_XS, kFtypeIQ4_XS},
    {"fp8", Mix::None, TypeId::FP8_E4M3_B128, kFtypeGuessed},
};

// llama.cpp's use_more_bits: the first and last eighth of the layers and every third
// one between get the larger type for ffn_down.
bool use_more_bits(int64_t il, int64_t n) {
    return il < n / 8 || il >= 7 * n / 8 || (il - n / 8) % 3 == 2;
}

int64_t layer_of(std::string_view name) {
    if (name.substr(0, 4) != "blk.") return -1;
    return std::strtoll(std::string(name.substr(4)).c_str(), nullptr, 10);
}

// Type of a tensor class in a mix (docs/quantization.md "Mixes").
TypeId mix_type(Mix m, TensorClass c, int64_t il, int64_t n_layer) {
    using T = TypeId;
    const bool more = il >= 0 && n_layer > 0 && use_more_bits(il, n_layer);
    switch (m) {
    case Mix::Q8_0: return T::Q8_0;
    case Mix::Q6_K: return c == TensorClass::Attention ? T::Q8_0 : T::Q6_K;
    case Mix::Q5_K_M:
        switch (c) {
        case TensorClass::Embedding: return T::Q5_K;
        case TensorClass::ExpertGateUp: case TensorClass::Other: return T::Q5_K;
        case TensorClass::ExpertDown: return more ? T::Q6_K : T::Q5_K;
        default: return T::Q6_K;
        }
    case Mix::Q4_K_M:
        switch (c) {
        case TensorClass::Embedding: return T::Q4_K;
        case TensorClass::Output: case TensorClass::Attention: return T::Q6_K;
        case TensorClass::DenseFfn: case TensorClass::SharedExpert: return T::Q5_K;
        case TensorClass::ExpertDown: return more ? T::Q6_K : T::Q4_K;
        default: return T::Q4_K;
        }
    case Mix::Q3_K_M:
        switch (c) {
        case TensorClass::Embedding: return T::Q4_K;
        case TensorClass::Output: return T::Q6_K;
        case TensorClass::Attention: return T::Q5_K;
        case TensorClass::DenseFfn: case TensorClass::SharedExpert: return T::Q4_K;
        case TensorClass::ExpertDown: return more ? T::Q4_K : T::Q3_K;
        default: return T::Q3_K;
        }
    case Mix::Q2_K:
        switch (c) {
        case TensorClass::Embedding: return T::Q4_K;
        case TensorClass::Output: return T::Q6_K;
        case TensorClass::Attention: return T::Q4_K;
        case TensorClass::DenseFfn: case TensorClass::SharedExpert: return T::Q4_K;
        case TensorClass::ExpertDown: return T::Q3_K;
        default: return T::Q2_K;
        }
    case Mix::None: break;
    }
    return T::F32;
}

// A plain type for every matrix, except that the float targets keep embeddings in F32
// (what `ds3 convert --outtype f32|bf16|f16` has always written) and FP8 keeps the
// tensors an FP8 release stores in BF16 (embeddings, lm_head) in BF16.
TypeId plain_type(TypeId t, TensorClass c) {
    if (c == TensorClass::Embedding && (t == TypeId::F32 || t == TypeId::F16 || t == TypeId::BF16)) return TypeId::F32;
    if (t == TypeId::FP8_E4M3_B128 && (c == TensorClass::Embedding || c == TensorClass::Output)) return TypeId::BF16;
    return t;
}

}  // namespace

std::optional<Target> parse_target(std::string_view name) {
    const std::string n = lower(name);
    for (const Named& t : kTargets)
        if (lower(t.name) == n) return Target{t.name, t.mix, t.type, t.file_type};
    if (n == "fp8_e4m3_b128") return parse_target("fp8");
    if (n == "q4_k_s") return parse_target("q4_K");
    if (n == "q5_k_s") return parse_target("q5_K");
    if (n == "q3_k_s") return parse_target("q3_K");
    return std::nullopt;
}

std::string target_names() {
    std::string mixes, plain;
    for (const Named& t : kTargets) {
        std::string& s = t.mix == Mix::None ? plain : mixes;
        s += (s.empty() ? "" : ", ") + std::string(t.name);
    }
    return "mixes " + mixes + "; plain types " + plain;
}

std::optional<TypeId> override_type_from_name(std::string_view name) {
    const std::string n = lower(name);
    if (n == "fp8") return TypeId::FP8_E4M3_B128;
    auto t = type_from_name(n);
    if (!t) return std::nullopt;
    const TypeTraits& tr = type_traits(*t);
    // Only types a matrix can be written in: a quantiser and a dequantiser, not the
    // activation-only Q8_K.
    if (!tr.from_float_ref || !tr.to_float || *t == TypeId::Q8_K) return std::nullopt;
    return t;
}

TensorClass classify_tensor(std::string_view name, size_t n_dims) {
    if (n_dims < 2 || has(name, "ffn_gate_inp") || has(name, "norm") || ends(name, ".bias")) return TensorClass::KeepF32;
    if (name == "token_embd.weight" || has(name, "nextn.embed_tokens")) return TensorClass::Embedding;
    if (name == "output.weight" || has(name, "nextn.shared_head_head")) return TensorClass::Output;
    if (has(name, ".attn_") || has(name, "nextn.eh_proj")) return TensorClass::Attention;
    if (has(name, "_shexp")) return TensorClass::SharedExpert;
    if (has(name, "ffn_down_exps")) return TensorClass::ExpertDown;
    if (has(name, "_exps")) return TensorClass::ExpertGateUp;
    if (has(name, ".ffn_gate.") || has(name, ".ffn_up.") || has(name, ".ffn_down.")) return TensorClass::DenseFfn;
    return TensorClass::Other;
}

std::string_view tensor_class_name(TensorClass c) {
    switch (c) {
    case TensorClass::KeepF32: return "norm/bias/router";
    case TensorClass::Embedding: return "embedding";
    case TensorClass::Output: return "output";
    case TensorClass::Attention: return "attention";
    case TensorClass::DenseFfn: return "dense ffn";
    case TensorClass::SharedExpert: return "shared expert";
    case TensorClass::ExpertGateUp: return "routed gate/up";
    case TensorClass::ExpertDown: return "routed down";
    case TensorClass::Other: return "other";
    }
    return "?";
}

TypeId fallback_type(TypeId wanted, uint64_t row_len) {
    const auto fits = [&](TypeId t) { return row_len % type_traits(t).block_size == 0; };
    if (fits(wanted)) return wanted;
    switch (wanted) {
    case TypeId::Q2_K: case TypeId::Q3_K: case TypeId::Q4_K: case TypeId::IQ4_XS:
        return fits(TypeId::Q4_0) ? TypeId::Q4_0 : TypeId::F16;
    case TypeId::Q5_K: case TypeId::Q6_K:
        return fits(TypeId::Q8_0) ? TypeId::Q8_0 : TypeId::F16;
    case TypeId::FP8_E4M3_B128:
        return TypeId::BF16;
    default:
        return TypeId::F16;
    }
}

struct TypeOverrides::Rule {
    std::string pattern;
    TypeId type;
    pcre2_code* code = nullptr;
    ~Rule() { pcre2_code_free(code); }
};

TypeOverrides::TypeOverrides() = default;
TypeOverrides::~TypeOverrides() = default;
TypeOverrides::TypeOverrides(TypeOverrides&&) noexcept = default;
TypeOverrides& TypeOverrides::operator=(TypeOverrides&&) noexcept = default;
bool TypeOverrides::empty() const { return rules_.empty(); }

void TypeOverrides::add(std::string_view spec) {
    const size_t eq = spec.rfind('=');
    if (eq == std::string_view::npos || eq == 0 || eq + 1 == spec.size())
        throw Error("quantize", "--tensor-type '" + std::string(spec) + "': expected REGEX=TYPE");
    auto rule = std::make_unique<Rule>();
    rule->pattern = std::string(spec.substr(0, eq));
    const std::string tname(spec.substr(eq + 1));
    const auto t = override_type_from_name(tname);
    if (!t)
        throw Error("quantize", "--tensor-type '" + std::string(spec) + "': unknown type '" + tname +
                                    "' (expected a type such as q4_K, q8_0, iq4_xs, bf16, f32, fp8)");
    rule->type = *t;
    int err = 0;
    PCRE2_SIZE off = 0;
    // Anchored at both ends: the pattern must match the whole tensor name.
    const std::string anchored = "(?:" + rule->pattern + ")\\z";
    rule->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(anchored.data()), anchored.size(), PCRE2_ANCHORED, &err,
                               &off, nullptr);
    if (!rule->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        const size_t at = off >= 3 ? off - 3 : 0;
        throw Error("quantize", "--tensor-type '" + std::string(spec) + "': bad regex at offset " + std::to_string(at) +
                                    ": " + reinterpret_cast<const char*>(msg));
    }
    rules_.push_back(std::move(rule));
}

std::optional<TypeId> TypeOverrides::match(std::string_view name) const {
    for (const auto& r : rules_) {
        pcre2_match_data* md = pcre2_match_data_create_from_pattern(r->code, nullptr);
        const int rc = pcre2_match(r->code, reinterpret_cast<PCRE2_SPTR>(name.data()), name.size(), 0, 0, md, nullptr);
        pcre2_match_data_free(md);
        if (rc >= 0) return r->type;
    }
    return std::nullopt;
}

TypeChoice choose_type(const Target& t, std::string_view name, const std::vector<uint64_t>& ne, int64_t n_layer,
                       const TypeOverrides* ov) {
    TypeChoice c;
    c.cls = classify_tensor(name, ne.size());
    if (ne.size() >= 2 && ov) {
        if (auto o = ov->match(name)) {
            c.wanted = *o;
            c.type = fallback_type(*o, ne[0]);
            return c;
        }
    }
    if (c.cls == TensorClass::KeepF32) {
        c.wanted = c.type = TypeId::F32;
        return c;
    }
    c.wanted = t.mix == Mix::None ? plain_type(t.type, c.cls) : mix_type(t.mix, c.cls, layer_of(name), n_layer);
    c.type = fallback_type(c.wanted, ne.empty() ? 1 : ne[0]);
    return c;
}

}  // namespace ds3::quant
