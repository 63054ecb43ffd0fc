// The scheduler: places every node of a graph on a backend and runs it.
//
// Placement (ARCHITECTURE.md "Placement: experts are the unit"): a node goes to the
// primary backend (index 0) when it supports it, else to the first backend that does.
// A moe_ffn node is split by the expert placement: one node per backend holding some of
// the layer's experts, each computing the weighted sum over its own subset, and the
// partial sums added on the primary backend. Activations cross backends (staged through
// the host); weights never do.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "backends/backend.h"
#include "runtime/graph/graph.h"
#include "runtime/kv_cache.h"

namespace ds3 {

struct ExpertPlacement {
    // expert_backend[layer][expert] = index into the scheduler's backends. A layer with
    // no entry (or an empty one) keeps all its experts on the primary backend.
    std::vector<std::vector<int>> expert_backend;
};

class Scheduler {
public:
    explicit Scheduler(std::vector<Backend*> backends, ExpertPlacement placement = {});

    const std::vector<Backend*>& backends() const { return backends_; }

    // Returns a copy of g with moe_ffn nodes split by the expert placement and every
    // node's `backend` set. Throws Error("sched", ...) when no backend supports a node.
    Graph place(const Graph& g) const;

    // Runs a placed graph. `inputs` fill the input nodes; the f32 results of the nodes
    // in `fetch` are returned (by node index; views among them stay valid until the next
    // run on the same backend). `cache` serves the mla_attn nodes.
    Fetched run(const Graph& placed, std::span<const GraphInput> inputs, KvCache* cache,
                std::span<const int> fetch) const;

    // Optional: called after each node has run with the node (as placed) and host views of
    // its inputs, one per src (f32 rows; an i32 input is passed as its raw bytes). For
    // tools that study activations (`ds3 imatrix`); costs nothing when unset.
    using NodeObserver = std::function<void(const Node& n, std::span<const float* const> inputs)>;
    void set_observer(NodeObserver f) { observer_ = std::move(f); }

private:
    Backend& backend_of_node(const Node& n) const;
    std::vector<Backend*> backends_;
    ExpertPlacement placement_;
    NodeObserver observer_;
};

}  // namespace ds3
