#include "models/synthetic.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>

#include "models/presets.h"
#include "quantize/formats.h"
#include "runtime/clock.h"
#include "runtime/error.h"
#include "runtime/rng.h"

namespace ds3 {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error("synthetic", msg); }

constexpr uint64_t kPoolCap = uint64_t{512} << 20;  // bytes of distinct memory per type
constexpr uint64_t kCopyBelow = uint64_t{1} << 20;  // smaller tensors are plain copies
constexpr int64_t kSeedElems = 65536;
constexpr float kSigma = 0.02f;

using Rng = SplitMix64;

uint64_t round_up(uint64_t v, uint64_t m) { return (v + m - 1) / m * m; }

// The pools of random blocks (one per weight type) and the tensor ranges made of them.
class Memory {
public:
    Memory() : page_(static_cast<uint64_t>(sysconf(_SC_PAGESIZE))) {}
    Memory(const Memory&) = delete;
    Memory& operator=(const Memory&) = delete;
    ~Memory() {
        for (auto& [p, n] : maps_) munmap(p, n);
        for (auto& [t, pool] : pools_) {
            if (pool.fd >= 0) {
                munmap(pool.base, pool.size);
                close(pool.fd);
            }
        }
    }

    bool aliased() const { return aliased_; }

    // The pool of type t, big enough for a tensor of max_bytes (up to kPoolCap).
    void make_pool(TypeId t, uint64_t max_bytes, Rng& rng) {
        const TypeTraits& tr = type_traits(t);
        Pool pool;
        pool.unit = std::lcm(page_, static_cast<uint64_t>(tr.type_size));
        pool.size = std::max(pool.unit, std::min(round_up(max_bytes, pool.unit), kPoolCap / pool.unit * pool.unit));
        if (aliased_) {
            pool.fd = memfd_create("ds3-synthetic", MFD_CLOEXEC);
            if (pool.fd >= 0 && ftruncate(pool.fd, static_cast<off_t>(pool.size)) == 0) {
                void* p = mmap(nullptr, pool.size, PROT_READ | PROT_WRITE, MAP_SHARED, pool.fd, 0);
                if (p != MAP_FAILED) pool.base = static_cast<uint8_t*>(p);
            }
            if (!pool.base) {  // no memfd here: tensors become copies of the pool
                if (pool.fd >= 0) close(pool.fd);
                pool.fd = -1;
                aliased_ = false;
            }
        }
        if (!pool.base) {
            copies_.emplace_back(pool.size);
            pool.base = copies_.back().data();
        }
        // The seed: values ~ N(0, kSigma²) through the type's own quantiser.
        const int64_t bs = tr.block_size;
        const int64_t n_seed = (kSeedElems + bs - 1) / bs * bs;
        std::vector<float> f(static_cast<size_t>(n_seed));
        for (float& x : f) x = rng.normal(kSigma);
        const uint64_t seed_blocks = static_cast<uint64_t>(n_seed / bs);
        std::vector<uint8_t> seed(seed_blocks * tr.type_size);
        quantize_row(t, f.data(), seed.data(), n_seed);
        // The pool: runs of whole blocks (about 4 KiB) from random places in the seed.
        const uint64_t run = std::max<uint64_t>(1, std::min<uint64_t>(4096 / tr.type_size, seed_blocks));
        const uint64_t n_blocks = pool.size / tr.type_size;  // unit-aligned: whole blocks
        for (uint64_t b = 0; b < n_blocks; b += run) {
            const uint64_t k = std::min(run, n_blocks - b);
            const uint64_t from = rng.next() % (seed_blocks - k + 1);
            std::memcpy(pool.base + b * tr.type_size, seed.data() + from * tr.type_size, k * tr.type_size);
        }
        pools_[t] = pool;
    }

    // nbytes of valid blocks of type t at addresses of their own.
    const uint8_t* tensor(TypeId t, uint64_t nbytes, Rng& rng) {
        const Pool& pool = pools_.at(t);
        const uint64_t start = (rng.next() % (pool.size / pool.unit)) * pool.unit;
        if (!aliased_ || nbytes < kCopyBelow) {
            copies_.emplace_back(nbytes);
            uint8_t* dst = copies_.back().data();
            for (uint64_t done = 0, off = start; done < nbytes; off = 0) {
                const uint64_t n = std::min(nbytes - done, pool.size - off);
                std::memcpy(dst + done, pool.base + off, n);
                done += n;
            }
            return dst;
        }
        const uint64_t len = round_up(nbytes, page_);
        void* res = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (res == MAP_FAILED) fail("cannot reserve " + std::to_string(len) + " bytes of address space: " + std::strerror(errno));
        maps_.emplace_back(res, len);
        uint8_t* base = static_cast<uint8_t*>(res);
        for (uint64_t done = 0, off = start; done < len; off = 0) {
            const uint64_t n = std::min(len - done, pool.size - off);
            if (mmap(base + done, n, PROT_READ, MAP_SHARED | MAP_FIXED, pool.fd, static_cast<off_t>(off)) == MAP_FAILED)
                fail("cannot map the weight pool (" + std::to_string(maps_.size()) + " ranges): " + std::strerror(errno));
            done += n;
        }
        return base;
    }

    std::vector<float>& floats(size_t n) {
        floats_.emplace_back(n);
        return floats_.back();
    }

private:
    struct Pool {
        int fd = -1;
        uint8_t* base = nullptr;
        uint64_t size = 0;
        uint64_t unit = 0;
    };
    uint64_t page_;
    bool aliased_ = true;
    std::map<TypeId, Pool> pools_;
    std::vector<std::pair<void*, size_t>> maps_;
    std::vector<std::vector<uint8_t>> copies_;
    std::vector<std::vector<float>> floats_;
};

}  // namespace

SyntheticModel build_synthetic(const Deepseek2HParams& hp, const quant::Target& target, uint64_t seed,
                               const std::string& name) {
    const auto t0 = Clock::now();
    hp.validate();
    struct Item {
        const TensorSpec* spec;
        TypeId type;
        uint64_t nbytes;
    };
    const std::vector<TensorSpec> specs = deepseek2_tensor_specs(hp);
    std::vector<Item> items;
    std::map<TypeId, uint64_t> max_bytes;
    SyntheticModel sm;
    for (const TensorSpec& s : specs) {
        std::vector<uint64_t> ne(s.ne.begin(), s.ne.end());
        TypeId type = TypeId::F32;
        if (s.role != TensorRole::Norm && s.role != TensorRole::Router) {
            const quant::TypeChoice c = quant::choose_type(target, s.name, ne, hp.n_layer);
            type = c.type;
            if (c.type != c.wanted) ++sm.n_fallback;
        }
        const auto nb = type_nbytes(type, static_cast<uint64_t>(s.n_elements()));
        if (!nb)
            fail(s.name + ": " + std::to_string(s.n_elements()) + " elements are not whole blocks of " +
                 std::string(type_traits(type).name));
        items.push_back({&s, type, *nb});
        if (s.role != TensorRole::Norm && s.role != TensorRole::Router) max_bytes[type] = std::max(max_bytes[type], *nb);
    }

    auto mem = std::make_shared<Memory>();
    Rng rng{seed * 0x2545f4914f6cdd1dull + 0x5eed5eedull};
    for (const auto& [t, n] : max_bytes) mem->make_pool(t, n, rng);
    WeightStore store;
    for (const Item& it : items) {
        const TensorSpec& s = *it.spec;
        sm.weight_bytes += it.nbytes;
        if (s.role == TensorRole::Norm || s.role == TensorRole::Router) {
            std::vector<float>& v = mem->floats(static_cast<size_t>(s.n_elements()));
            const bool bias = s.ne.size() == 1 && s.role == TensorRole::Router;
            const float sigma = 1.0f / std::sqrt(static_cast<float>(s.ne[0]));
            for (float& x : v)
                x = s.role == TensorRole::Norm ? 1.0f + rng.uniform(0.1f) : bias ? rng.uniform(0.05f) : rng.normal(sigma);
            store.add_view(s.name, TypeId::F32, s.ne, reinterpret_cast<const uint8_t*>(v.data()));
        } else {
            store.add_view(s.name, it.type, s.ne, mem->tensor(it.type, it.nbytes, rng));
        }
    }
    sm.aliased = mem->aliased();
    sm.memory = mem;
    sm.model = bind_deepseek2(hp, std::move(store));
    sm.preset = name;
    sm.target = target;
    sm.n_layer_full = hp.n_layer;
    sm.build_seconds = seconds_since(t0);
    return sm;
}

SyntheticModel build_synthetic(const SyntheticOptions& o) {
    const auto target = quant::parse_target(o.type);
    if (!target) fail("unknown type '" + o.type + "' (known: " + quant::target_names() + ")");
    if (o.layers < 0) fail("--layers must be non-negative, found " + std::to_string(o.layers));
    const Deepseek2HParams full = preset_hparams(o.preset);
    if (o.layers > full.n_layer)
        fail("preset " + o.preset + " has " + std::to_string(full.n_layer) + " layers, asked for " +
             std::to_string(o.layers));
    SyntheticModel sm = build_synthetic(preset_hparams(o.preset, o.layers), *target, o.seed, o.preset);
    sm.n_layer_full = full.n_layer;
    return sm;
}

}  // namespace ds3
