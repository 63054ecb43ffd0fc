// The latent KV cache of absorbed MLA: per layer, per position, the normalised latent
// c_kv (kv_lora_rank values) followed by the roped k_pe (qk_rope_head_dim values) —
// never per-head K/V (ARCHITECTURE.md "KV cache"). f32 for now; the row layout is what
// mla_attn kernels read: [n_ctx][kv_lora + qk_rope].
//
// Each layer's storage lives on the backend that runs that layer's attention; it is
// allocated there on first use.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backends/backend.h"

namespace ds3 {

class KvCache {
public:
    KvCache(int n_layer, int64_t n_ctx, int64_t kv_lora, int64_t qk_rope);

    int n_layer() const { return static_cast<int>(layers_.size()); }
    int64_t n_ctx() const { return n_ctx_; }
    int64_t n_past() const { return n_past_; }
    int64_t row_width() const { return width_; }  // kv_lora + qk_rope
    uint64_t bytes_per_token() const { return static_cast<uint64_t>(width_) * 4 * layers_.size(); }

    // Throws Error("kv_cache", ...) when n_new more tokens would not fit in the context.
    void check_fits(int64_t n_new) const;
    void advance(int64_t n);  // after a batch ran
    void clear() { n_past_ = 0; }

    // Layer l's storage on backend b (allocated there on first use; a layer stays on
    // the backend it was first placed on).
    Buffer& layer(int l, Backend& b);

private:
    struct Slot {
        Backend* backend = nullptr;
        std::unique_ptr<Buffer> buf;
    };
    std::vector<Slot> layers_;
    int64_t n_ctx_;
    int64_t width_;
    int64_t n_past_ = 0;
};

}  // namespace ds3
