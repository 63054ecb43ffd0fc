// The backend interface every device implements (CPU now; CUDA and Vulkan later).
// Modelled on ggml-backend's split, kept small:
//   - supports(node): can this backend run this op with these weight types?
//   - Buffer: device memory for activations and state (the latent KV cache), moved to
//     and from the host with upload()/download(); host_ptr() is non-null when the bytes
//     are directly addressable (the CPU), which lets the scheduler skip staging.
//   - compute(node, ...): run one node whose inputs are already resident here.
// Weights are not uploaded through this interface: a node carries Weight views on the
// mapped file and a device backend keeps its own resident copy keyed by the view (so
// weights never cross the bus during decode, ARCHITECTURE.md "Placement").
// compute() may return before the work is done; synchronize() waits. The scheduler
// calls synchronize() before reading a result on another backend, which is what lets
// the moe_ffn partials of several backends overlap.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/error.h"
#include "runtime/graph/graph.h"

namespace ds3 {

class KvCache;

struct GraphInput {
    int node = -1;
    const void* data = nullptr;  // node.nbytes() bytes (f32 or i32 as the node says)
};

// The f32 values a run fetched, by node: copies it owns, or views of a backend's memory
// that stay valid until that backend runs its next graph (a replayed CUDA step hands back
// its pinned output slot rather than copying half a megabyte of logits a token).
struct Fetched {
    std::map<int, std::vector<float>> owned;
    std::map<int, std::span<const float>> viewed;

    std::span<const float> at(int id) const {
        if (auto it = owned.find(id); it != owned.end()) return it->second;
        if (auto it = viewed.find(id); it != viewed.end()) return it->second;
        throw Error("sched", "node " + std::to_string(id) + " was not fetched");
    }
    // The values as a vector of their own (moved out when owned).
    std::vector<float> take(int id) {
        if (auto it = owned.find(id); it != owned.end()) return std::move(it->second);
        const std::span<const float> v = at(id);
        return {v.begin(), v.end()};
    }
};

class Buffer {
public:
    virtual ~Buffer() = default;
    virtual size_t size() const = 0;
    virtual void* host_ptr() { return nullptr; }
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual const std::string& name() const = 0;
    virtual bool supports(const Node& n) const = 0;
    virtual std::unique_ptr<Buffer> alloc(size_t bytes) = 0;
    virtual void upload(Buffer& dst, size_t offset, const void* src, size_t n) = 0;
    virtual void download(const Buffer& src, size_t offset, void* dst, size_t n) = 0;
    // Computes `n` into `out`. inputs[i] holds n.src[i]; `state` is the node's layer of
    // the latent cache for mla_attn (nullptr otherwise).
    virtual void compute(const Node& n, std::span<Buffer* const> inputs, Buffer& out, Buffer* state) = 0;
    virtual void synchronize() {}

    // Optional: runs a whole placed graph whose every node is on this backend, as
    // Scheduler::run does, when the backend can do it better at once (the CUDA backend
    // captures a decode step into a CUDA graph and replays it). Returns false to have the
    // scheduler run the graph node by node instead. The fetched nodes' values go to
    // `results`, as copies or as views valid until this backend's next run_graph.
    virtual bool run_graph(const Graph& g, std::span<const GraphInput> inputs, KvCache* cache,
                           std::span<const int> fetch, Fetched& results) {
        (void)g, (void)inputs, (void)cache, (void)fetch, (void)results;
        return false;
    }
};

struct BackendOptions {
    int n_threads = 0;  // CPU: 0 = OpenMP's default
};

// Creates a backend by name ("cpu"); throws Error("backend", ...) for an unknown or
// unavailable one, listing those that exist.
std::unique_ptr<Backend> create_backend(std::string_view name, const BackendOptions& opts = {});
std::vector<std::string> available_backends();

}  // namespace ds3
