#include "runtime/kv_cache.h"

#include <string>

#include "runtime/error.h"

namespace ds3 {

KvCache::KvCache(int n_layer, int64_t n_ctx, int64_t kv_lora, int64_t qk_rope)
    : layers_(static_cast<size_t>(n_layer)), n_ctx_(n_ctx), width_(kv_lora + qk_rope) {
    check(n_ctx > 0, "kv_cache", "context size must be positive, found " + std::to_string(n_ctx));
    check(n_layer >= 0 && kv_lora > 0 && qk_rope >= 0, "kv_cache", "bad cache geometry");
}

void KvCache::check_fits(int64_t n_new) const {
    if (n_past_ + n_new > n_ctx_)
        throw Error("kv_cache", "context size exceeded: " + std::to_string(n_past_) + " cached + " +
                                    std::to_string(n_new) + " new tokens > " + std::to_string(n_ctx_) +
                                    " (raise -c)");
}

void KvCache::advance(int64_t n) {
    check_fits(n);
    n_past_ += n;
}

Buffer& KvCache::layer(int l, Backend& b) {
    check(l >= 0 && l < n_layer(), "kv_cache", "layer " + std::to_string(l) + " out of range");
    Slot& s = layers_[static_cast<size_t>(l)];
    if (!s.buf) {
        s.backend = &b;
        s.buf = b.alloc(static_cast<size_t>(n_ctx_ * width_) * 4);
    }
    check(s.backend == &b, "kv_cache",
          "layer " + std::to_string(l) + " cache lives on " + s.backend->name() + ", not " + b.name());
    return *s.buf;
}

}  // namespace ds3
