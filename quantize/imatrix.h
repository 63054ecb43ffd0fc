// Importance matrix: per weight matrix, the sum over calibration tokens of each input
// column's squared activation (and how many tokens were summed), collected by `ds3
// imatrix` and used by `ds3 quantize --imatrix` as per-column quantiser weights (the
// mean square, in_sum2 / count). Routed experts and the per-head W_kb are counted per
// matrix: an expert only over the tokens routed to it. Per-expert token counts of every
// MoE layer are kept for expert placement.
//
// File: a GGUF (docs/quantization.md "Importance matrix file"): general.type "imatrix",
// ds3.imatrix.* metadata, and per weight W the F32 tensors "W.in_sum2" {ne0, n_mat} and
// "W.counts" {n_mat} (the names and shapes of llama.cpp's GGUF imatrix), plus
// "ds3.expert_tokens" {n_expert, n_layer} (zeros for dense layers).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace ds3 {
struct Deepseek2Model;
class Runner;
}

namespace ds3::quant {

struct ImatrixEntry {
    int64_t ne0 = 0;
    int64_t n_mat = 1;
    std::vector<double> in_sum2;  // [n_mat][ne0]
    std::vector<double> counts;   // [n_mat]
};

struct Imatrix {
    std::map<std::string, ImatrixEntry> entries;  // by weight name
    int64_t n_layer = 0, n_expert = 0;
    std::vector<double> expert_tokens;  // [n_layer][n_expert]
    uint64_t chunk_count = 0, chunk_size = 0, n_tokens = 0;
    std::string dataset;  // calibration file name
    std::string model;    // general.name of the model it was collected on

    // The per-column importance (mean squared activation, ne0 values) of matrix `mat` of
    // `weight`, written to `out`; false when the file has no entry or the matrix saw no
    // token. Throws Error("imatrix", ...) when the entry's shape disagrees with the weight's.
    bool importance(const std::string& weight, int64_t mat, int64_t ne0, std::vector<float>& out) const;

    void save(const std::string& path) const;     // atomic (gguf::Writer)
    static Imatrix load(const std::string& path);  // Error("imatrix", ...) on a bad file
};

// Observes a Runner's CPU evaluation and accumulates its activations into an Imatrix:
// inputs of mul_mat / logits / shared_ffn / moe_ffn (per routed expert), the q_nope input
// of MLA's W_kb per head and the attended latent, W_vb's input, per head. Activations
// inside fused ops are recomputed from the node's inputs: the input of ffn_down (SwiGLU of
// gate and up), and the attended latent (the attention again, on the collector's own copy
// of each layer's latent cache).
class ImatrixCollector {
public:
    ImatrixCollector(const Deepseek2Model& model, Imatrix& out, int n_threads);
    // Installs the observer on `r` (remove with r.set_observer({}) before this dies).
    void attach(Runner& r);

private:
    Imatrix& im_;
    int n_threads_;
};

}  // namespace ds3::quant
