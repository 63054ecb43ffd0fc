// Two streams for a captured decode step: independent branches of the graph (a layer's
// latent-KV path beside its query path, the shared experts beside the routing and the
// routed experts) are enqueued on a second stream, joined by events, so the captured CUDA
// graph runs them at the same time. The many small kernels of a branch (a GEMV of a few
// hundred rows, an RMS norm, RoPE) then overlap instead of each adding its launch and
// tail latency to the step.
//
// Placement, node by node in graph order (a "unit" is one launch site covering one or
// more nodes, e.g. the fused add → RMS norm):
//  - a unit whose newest source is the last unit of a stream continues that stream
//    (stream 0 first);
//  - otherwise, when stream 1 has nothing the other stream has not waited for, the unit
//    forks onto it: a branch that starts from an older result;
//  - otherwise it goes where its newest source is.
// Before launching, a unit waits for the events of its sources on the other stream; at
// the end stream 0 waits for whatever stream 1 did last. Only used while capturing: the
// pool then never reuses scratch within the step, so concurrent units cannot share it.
#pragma once

#include <cuda_runtime.h>

#include <span>
#include <vector>

namespace ds3::cuda {

// The decisions alone, host code with no CUDA calls (tested without a GPU): streams are
// 0 and 1, and a node's event is named by the last node of the unit that made it.
class BranchPlan {
public:
    struct Step {
        int stream = 0;
        int wait = -1;  // first make the stream wait for this node's event (-1: none)
    };
    // Starts a step of n nodes.
    void begin(int n);
    // Where a unit whose sources (node indices, producers only: no inputs, no aliases) are
    // `srcs` goes, and what it waits for there.
    Step place(std::span<const int> srcs);
    // The unit placed last covered nodes [first, last]: their results are ready after it.
    void done(int first, int last);
    // The node whose event stream 0 waits for before the step ends (-1: none).
    int join();

private:
    std::vector<int> where_;     // per node: its stream, -1 before it runs
    std::vector<int> event_of_;  // per node: the node whose event marks it ready
    int last_[2] = {-1, -1};     // the last unit's last node on each stream
    int synced_[2] = {-1, -1};   // synced_[s]: the newest node of the other stream s waited for
    int cur_ = 0;                // the stream of the unit being placed
};

// BranchPlan's decisions carried out on two CUDA streams with one event per node.
class Branches {
public:
    Branches() = default;
    ~Branches();
    Branches(const Branches&) = delete;
    Branches& operator=(const Branches&) = delete;

    // Starts a step of n nodes on `main` (the capturing stream) and `side`.
    void begin(cudaStream_t main, cudaStream_t side, int n);
    // The stream for a unit with sources `srcs` (as BranchPlan::place), after its waits.
    cudaStream_t place(std::span<const int> srcs);
    // The unit placed last covered nodes [first, last]: records its event.
    void done(int first, int last);
    // Stream 0 waits for stream 1's last unit (before the capture ends).
    void join();

private:
    BranchPlan plan_;
    cudaStream_t s_[2] = {nullptr, nullptr};
    std::vector<cudaEvent_t> events_;  // one per node index, made once and reused
    int cur_ = 0;                      // the stream of the unit being placed
};

}  // namespace ds3::cuda
