// The one table from Hugging Face tensor names to GGUF tensor names and shapes for the
// DeepSeek family (llama.cpp's "deepseek2" names; docs/gguf.md lists them). Driven by the
// config: which tensors a layer has (q_lora or plain q_proj, dense or MoE FFN, router
// bias, shared experts, MTP extras) and every expected shape follow from HfConfig, so a
// checkpoint that disagrees is caught before anything is written.
//
// Three transformations besides renaming (shapes: PyTorch [rows, cols]; ne: GGUF order,
// ne[0] fastest):
//   kv_b_proj [n_head*(qk_nope+v_head), kv_lora] is split per head into
//     attn_k_b  ne [qk_nope, kv_lora, n_head]  (head h's k rows, transposed) and
//     attn_v_b  ne [kv_lora, v_head, n_head]   (head h's v rows as they are);
//   mlp.experts.{0..E-1}.{gate,up,down}_proj are stacked into one 3-D ffn_*_exps with
//     ne [cols, rows, E], expert e at slice e;
//   everything else keeps its data and reverses its shape into ne.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "convert/hf_config.h"

namespace ds3::hf {

// What a tensor is, which decides its stored type: norms, the router, biases and
// embeddings stay F32 in every output type (small and precision-critical); matrices take
// the requested output type.
enum class Role { Norm, Embedding, Router, Bias, Matrix };

enum class Source {
    Direct,       // one HF tensor, same data
    KvbK,         // the k half of kv_b_proj, per head transposed
    KvbV,         // the v half of kv_b_proj
    ExpertStack,  // hf_names[e] is expert e
};

struct TensorPlan {
    std::string gguf_name;               // "blk.3.attn_k_b.weight"
    std::vector<uint64_t> ne;            // GGUF order
    Role role = Role::Matrix;
    Source source = Source::Direct;
    std::vector<std::string> hf_names;   // one, or n_routed_experts for ExpertStack
    std::vector<uint64_t> hf_shape;      // expected PyTorch shape of each of hf_names
};

// Every GGUF tensor of the model described by `c`, in file order: token_embd, then each
// block (MTP blocks last, numbered after the main ones), then output_norm and output.
std::vector<TensorPlan> plan_tensors(const HfConfig& c);

// HF tensors that are known to carry nothing the model needs (rotary caches some
// releases ship); the converter accepts and skips them.
bool is_ignorable_hf_tensor(const std::string& hf_name);

}  // namespace ds3::hf
