// What `ds3 quantize TYPE` and `ds3 convert --outtype TYPE` mean, tensor by tensor: the
// one per-tensor type choice both use (so a one-pass convert writes exactly the types a
// convert-then-quantize would). A target is either a plain type (every matrix gets it)
// or a mix in the spirit of llama.cpp's: attention, shared experts and dense layers get
// more bits than the routed experts, which hold almost all of a DeepSeek model's weights.
// docs/quantization.md has the table of every mix.
//
// Norms, biases and the router (ffn_gate_inp) always stay F32. A matrix whose row length
// (ne[0]) is not a whole number of the chosen type's blocks falls back to a type that
// fits: K-quants and IQ4_XS of ≤ 4 bits to Q4_0, Q5_K/Q6_K to Q8_0, then (rows not a
// multiple of 32) F16; FP8 to BF16.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "quantize/types.h"

namespace ds3::quant {

enum class Mix { None, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q3_K_M, Q2_K };

struct Target {
    std::string name;      // canonical spelling: "Q4_K_M", "q4_K", "fp8", "bf16"
    Mix mix = Mix::None;   // None: a plain type
    TypeId type = TypeId::F32;  // plain: every matrix; mix: the routed experts' gate/up type
    uint32_t file_type = 0;     // general.file_type (llama.cpp's LLAMA_FTYPE numbering)
};

// Case-insensitive. The mix names Q8_0, Q6_K and Q2_K shadow the plain types of the same
// name (force a plain type with --tensor-type '.*=q6_K'). nullopt for an unknown name.
std::optional<Target> parse_target(std::string_view name);
// "Q8_0, Q6_K, Q5_K_M, ... ; plain: q4_0, ..." for error messages and --help.
std::string target_names();
// The plain types an override (--tensor-type) may name: type_from_name plus "fp8".
std::optional<TypeId> override_type_from_name(std::string_view name);

enum class TensorClass {
    KeepF32,       // norms, biases, router: never quantized
    Embedding,     // token_embd, nextn.embed_tokens
    Output,        // output (lm_head), nextn.shared_head_head
    Attention,     // attn_q_a / q_b / q / kv_a_mqa / k_b / v_b / kv_b / output, nextn.eh_proj
    DenseFfn,      // ffn_gate / up / down of the leading dense layers
    SharedExpert,  // ffn_*_shexp
    ExpertGateUp,  // ffn_gate_exps, ffn_up_exps
    ExpertDown,    // ffn_down_exps
    Other,         // any other matrix: the target's base type
};
TensorClass classify_tensor(std::string_view name, size_t n_dims);
std::string_view tensor_class_name(TensorClass c);

// --tensor-type REGEX=TYPE rules; the first whose regex matches the whole tensor name wins.
class TypeOverrides {
public:
    TypeOverrides();
    ~TypeOverrides();
    TypeOverrides(TypeOverrides&&) noexcept;
    TypeOverrides& operator=(TypeOverrides&&) noexcept;
    // Throws Error("quantize", ...) for a missing '=', a bad regex (with its offset) or an
    // unknown type.
    void add(std::string_view spec);
    std::optional<TypeId> match(std::string_view tensor_name) const;
    bool empty() const;

private:
    struct Rule;
    std::vector<std::unique_ptr<Rule>> rules_;
};

struct TypeChoice {
    TypeId type = TypeId::F32;    // what is written
    TypeId wanted = TypeId::F32;  // what the mix / override asked for (differs on fallback)
    TensorClass cls = TensorClass::Other;
};

// The type of tensor `name` (GGUF name, ne in GGUF order) under `t`. n_layer: the file's
// block count (the routed ffn_down of some layers gets more bits, as llama.cpp's
// use_more_bits does). `ov` (nullable) overrides matrices (n_dims ≥ 2).
TypeChoice choose_type(const Target& t, std::string_view name, const std::vector<uint64_t>& ne, int64_t n_layer,
                       const TypeOverrides* ov = nullptr);
// A type whose blocks fit rows of `row_len` elements, starting from `wanted`.
TypeId fallback_type(TypeId wanted, uint64_t row_len);

}  // namespace ds3::quant
