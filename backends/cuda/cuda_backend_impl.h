// The CUDA backend's class, shared by its three files: cuda_backend.cpp (the device,
// buffers, synchronisation and each op's launches), cuda_step.cpp (decode steps captured
// into CUDA graphs and replayed) and cuda_profile.cpp (DS3_CUDA_PROFILE). Host code only;
// the kernels live in the .cu files behind kernels.h. Not part of the library's interface:
// cuda_backend.h is.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "backends/backend.h"
#include "backends/cuda/branches.h"
#include "backends/cuda/kernels.h"
#include "backends/cuda/pool.h"
#include "backends/cuda/resident.h"
#include "runtime/error.h"

namespace ds3::cuda {

// Launch errors (bad configuration) surface here; faults inside kernels at the next sync.
inline void launched(const std::string& what) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) throw Error("cuda", what + ": kernel launch failed: " + cudaGetErrorString(e));
}

inline float* f32(Buffer* b) { return static_cast<float*>(static_cast<CudaBuffer*>(b)->dev()); }
inline const int32_t* i32(Buffer* b) { return static_cast<const int32_t*>(static_cast<CudaBuffer*>(b)->dev()); }

// A replayed decode step launches the store and k_b of an MLA node ahead of it (record()):
// the MLA node whose query is RoPE node i's output (one query row, read by nothing else
// before it, the positions an input), or -1. Host only (cuda_step.cpp).
int mla_early_node(const Graph& g, int i);
// The routing node of the MoE layer whose shared experts are node i (both read one input),
// which a replayed step makes them wait for (record()); -1 otherwise.
int shared_after_route(const Graph& g, int i);
// Whether node i is an MoE layer's shared experts that are wide next to what its routed
// experts read for a token: more than a quarter of their width (n_used · n_ff_exp). Such a
// layer's shared experts wait for its routing (launched beside the router, their blocks
// held the SMs that the routing's one block then waited for: V2-Lite, 2 · 1408 against 6 ·
// 1408, was ~30 µs a step slower without the wait); narrower ones start beside the router
// (V3, 2048 against 8 · 2048: ~7 µs a step faster than waiting). Host only.
bool shared_ffn_wide(const Graph& g, int i);
// The latent norm and key RoPE nodes of MLA node m that a replayed step launches as one
// kernel with the cache store (mla_latent): both read views of one kv_a row, only views
// lie between them, and only m reads them; {-1, -1} otherwise.
struct MlaLatent {
    int lat = -1, kpe = -1;
};
MlaLatent mla_latent_nodes(const Graph& g, int m);
// The part of a replayed step's key that its nodes make (cuda_step.cpp; host only):
// every node's op, shape, inputs, weights and parameters but attn.pos0.
uint64_t graph_nodes_key(const Graph& g);

class CudaBackend final : public Backend {
public:
    CudaBackend(const BackendOptions&, std::string name);
    ~CudaBackend() override;
    const std::string& name() const override { return name_; }
    bool supports(const Node& n) const override;
    std::unique_ptr<Buffer> alloc(size_t bytes) override { return std::make_unique<CudaBuffer>(pool_, bytes); }
    void upload(Buffer& dst, size_t offset, const void* src, size_t n) override;
    void download(const Buffer& src, size_t offset, void* dst, size_t n) override;
    void synchronize() override;
    void compute(const Node& n, std::span<Buffer* const> in, Buffer& out_buf, Buffer* state) override;

    // cuda_step.cpp: decode steps captured into CUDA graphs and replayed.
    bool run_graph(const Graph& g, std::span<const GraphInput> inputs, KvCache* cache, std::span<const int> fetch,
                   Fetched& results) override;

private:
    void use_device();  // this thread on the backend's device

    // A replayable decode step: one arena holding every node's output, the scratch blocks
    // its kernels were captured with, and the instantiated graph.
    struct GraphExec {
        uint64_t key = 0;
        std::shared_ptr<Pool> pool;
        void* arena = nullptr;
        std::vector<size_t> offset;                    // per node, into the arena
        std::vector<uint8_t> alias;                    // per node: a view on its source's slot
        std::vector<size_t> q8;                        // per RMS norm: its quantised copy's offset (0: none)
        std::vector<std::unique_ptr<CudaBuffer>> views;  // per node, on the arena
        Pool::Held held;                               // scratch the capture used
        std::vector<uint8_t> fetched;                  // per node: read back after the step
        std::vector<uint8_t> mapped;                   // per node: written in its pinned slot
        cudaGraphExec_t exec = nullptr;
        int runs = 0;
        bool eager_only = false;  // the capture failed once: run node by node

        float* at(int i) const { return static_cast<float*>(views[static_cast<size_t>(i)]->dev()); }
        // Pinned host memory: the input nodes' data (where a captured step copies it from),
        // then the fetched results, in fetch order (`mapped` ones written there by their
        // kernel, the others copied after the step).
        uint8_t* host = nullptr;
        std::vector<std::pair<int, size_t>> inputs;  // (input node, offset in host and in the arena)
        size_t in_bytes = 0;                          // the inputs' bytes at the start of host and arena
        size_t out_offset = 0;
        void* input_slot(int node) const {
            for (const auto& [id, off] : inputs)
                if (id == node) return host + off;
            throw Error("cuda", "run_graph: node " + std::to_string(node) + " is not an input of the step");
        }
        float* output_slot(size_t at) const { return reinterpret_cast<float*>(host + out_offset + at); }
        ~GraphExec() {
            if (host) cudaFreeHost(host);
            if (exec) cudaGraphExecDestroy(exec);
            for (auto& [p, cap] : held) pool->put(p, cap);
            views.clear();
            if (arena) cudaFree(arena);
        }
    };
    uint64_t graph_key(const Graph& g, KvCache* cache, std::span<const int> fetch);
    struct GraphFacts {
        uint64_t version = 0;    // the Graph::version() they were made for (0: none)
        uint64_t nodes_key = 0;  // graph_nodes_key
        bool replayable = false;  // every node ≤ 8 rows, every MLA node with its position and cache sources
        std::vector<int> mla;     // the mla_attn nodes
    };
    GraphFacts facts_;
    bool key_cache_ = true;  // DS3_CUDA_KEY_CACHE=0: facts_of makes them anew each step
    const GraphFacts& facts_of(const Graph& g);
    GraphExec& exec_for(const Graph& g, KvCache* cache, std::span<const int> fetch);
    void copy_inputs(const GraphExec& e);
    static int match_add_norm(const Graph& g, int i);
    void launch_add_norm(const Graph& g, GraphExec& e, int i, int covered);
    void* quantised_copy(GraphExec& e, int j, const Node& norm);
    // Node i (MLA) and the product right after it that reads its output.
    static bool projected_next(const Graph& g, int i);
    void record(const Graph& g, GraphExec& e, KvCache* cache, bool capturing = false);
    template <typename Unit>
    int record_mla_early(const Graph& g, GraphExec& e, KvCache* cache, int i, Unit& unit);
    void capture(const Graph& g, GraphExec& e, KvCache* cache);

    // cuda_backend.cpp: each op's launches.
    void compute_op(const Node& n, std::span<Buffer* const> in, Buffer& out_buf, Buffer* state);

    // cuda_profile.cpp. DS3_CUDA_PROFILE=1: GPU time (events around each node) and host
    // time (inside compute) per op kind, summed over the backend's life and printed to
    // stderr at its end. The events are read back when the backend next synchronises.
    struct ProfRow {
        int64_t calls = 0;
        double gpu_ms = 0, host_ms = 0;
    };
    void prof_begin();
    void prof_end(const Node& n, std::chrono::steady_clock::time_point t0);
    cudaEvent_t sub_event();
    void sub_start(int64_t rows);
    void sub_mark(const char* label);
    struct SubSpan {
        cudaEvent_t a, b;
        const char* label;
        bool small;
    };
    void prof_collect();
    void prof_print();

    // cuda_backend.cpp, the ops' pieces. The resident copy of w, and (resident) with the
    // type its kernels read it as: one lookup (a fingerprint of the host bytes) per weight
    // and use.
    const void* weight(const Weight& w) { return resident(w).ptr; }
    const cuda::Resident::Entry& resident(const Weight& w);
    void rms_norm(const Node& n, const float* x, float* y, void* yq = nullptr);
    // xq: x already quantised for the integer GEMV (GemmArgs::xq); null: as gemv_scratch finds.
    void matmul(const Weight& w, const float* x, int64_t rows, float* y, const void* xq = nullptr);
    void gemv_scratch(cuda::GemmArgs& a, std::optional<Scratch>& slot);
    const void* quantised(const float* x, int64_t rows, int64_t cols) const;
    void rope(const Node& n, const float* x, const int32_t* pos, float* y);
    static cuda::RopeArgs rope_args(const Node& n);
    void mla_attn(const Node& n, const float* q, const float* latent, const float* k_pe, const int32_t* positions,
                  Buffer& cache_buf, float* out);
    // mla_attn's three parts, in its order; a recorded decode step launches the first two
    // earlier, beside the nodes that make their inputs (record()).
    int64_t mla_context(const Node& n, const Buffer& cache_buf);
    void mla_store(const Node& n, const float* latent, const float* k_pe, const int32_t* positions, Buffer& cache_buf);
    void mla_absorb(const Node& n, const float* q, float* q_abs, const void* q8, bool quantise_rows = false);
    void mla_attend(const Node& n, const float* q, const float* q_abs, const int32_t* positions, Buffer& cache_buf,
                    float* out, const float* pe_cs = nullptr);
    void moe_route(const Node& n, const float* x, float* out);
    cuda::MoeArgs moe_args(const Node& n);
    void moe_ffn(const Node& n, const float* x, const float* route, float* out);
    void shared_ffn(const Node& n, const float* x, float* out);

    std::string name_;
    int device_ = 0;
    int n_sm_ = 1;
    cudaStream_t stream_ = nullptr;
    cuda::DevError* err_ = nullptr;
    cuda::DevError* err_host_ = nullptr;  // pinned: synchronize() reads the error word here
    bool err_mapped_ = true;  // DS3_CUDA_MAPPED_ERR=0: err_ in device memory, copied to err_host_ in each wait
    std::shared_ptr<Pool> pool_;
    std::unique_ptr<cuda::Resident> weights_;
    bool prof_ = false;
    int prof_level_ = 0;
    std::vector<cudaEvent_t> sub_events_;
    size_t sub_used_ = 0;
    cudaEvent_t sub_prev_ = nullptr;
    bool sub_small_ = false;
    std::vector<SubSpan> sub_pending_;
    bool graphs_ = true;
    bool mapped_out_ = true;  // DS3_CUDA_MAPPED_OUT=0: fetched results copied after the step
    // DS3_CUDA_STEP_TIMES=1: the host's time around each replayed step, and the device's
    // (events: the step with its copies, and the idle time since the step before), printed
    // at exit.
    bool step_times_ = false;
    struct {
        int64_t n = 0;
        double before = 0, launch = 0, wait = 0, after = 0, device = 0;
        std::vector<float> idle;     // µs between a timed step's end and the next one's start
        std::vector<float> outside;  // host µs from a timed step's return to the next one's run_graph
        std::chrono::steady_clock::time_point exit{};
        cudaEvent_t start = nullptr, end = nullptr, prev_end = nullptr;
    } steps_;
    bool norm_q8_ = true;  // DS3_CUDA_NORM_Q8=0: the norms of a replayed step write no quantised copy
    bool streams_ = true;  // DS3_CUDA_STREAMS=0: a captured step on one stream
    bool mla_early_ = true;     // DS3_CUDA_MLA_EARLY=0: MLA at decode in its node's chain (record_mla_early)
    bool latent_fused_ = true;  // DS3_CUDA_MLA_LATENT=0: the latent side of MLA's early chain as three launches
    int shexp_wait_ = -1;       // DS3_CUDA_SHEXP_WAIT=0|1: the shared experts never / always wait (-1: shared_ffn_wide)
    bool q_unroped_ = true;     // DS3_CUDA_MLA_ROTATE=0: MLA's early chain ropes the query in a launch of its own
    bool pdl_batch_off_ = true;  // DS3_CUDA_PDL_BATCH=1: a batch's ops with dependent launch too
    bool act_q8_ = true;   // DS3_CUDA_ACT_Q8=0: the downs quantise their input themselves (not the gate/up)
    bool moe_sum_ = true;  // DS3_CUDA_MOE_SUM=0: the MoE down's pairs added by moe_combine, not in its kernel
    cudaStream_t side_ = nullptr;  // the second stream of a captured step
    cuda::Branches branches_;
    // The quantised norm outputs of the step being recorded (record()).
    struct Quantised {
        const float* x;
        const void* q;
        int64_t rows, cols;
    };
    std::vector<Quantised> quantised_;
    // The MLA node whose store and k_b the step being recorded launched ahead (record()):
    // its q_abs, and whether its rows are already in the cache.
    struct MlaAhead {
        int node = -1;
        bool stored = false;
        MlaLatent latent;  // mla_latent_nodes(node), found once
        // The query left unrotated (its RoPE node launches nothing): the latent kernel writes
        // its angles' (cos, sin) to cs and the split rotates q_pe with them.
        const float* q_raw = nullptr;
        std::optional<Scratch> q_abs, q8, cs;
        void reset() {
            node = -1;
            stored = false;
            latent = {};
            q_raw = nullptr;
            q_abs.reset();
            q8.reset();
            cs.reset();
        }
    };
    MlaAhead mla_ahead_;
    // The output projection read right after the MLA node being recorded (null: none known);
    // mla_attn asks L2 for its first bytes.
    const Weight* attn_out_ = nullptr;
    // The arena slot for that node's output quantised (one token; exec_for): v_b's kernel
    // writes it where it can, and the projection then reads it (quantised_).
    void* attn_yq_ = nullptr;
    bool stale_graphs_ = false;  // a weight was uploaded afresh: captured graphs may read the old copy
    std::vector<std::unique_ptr<GraphExec>> execs_;  // most recently used first
    std::vector<std::pair<cudaEvent_t, cudaEvent_t>> prof_events_;
    size_t prof_used_ = 0;
    std::vector<std::string> prof_pending_;
    std::map<std::string, ProfRow> prof_rows_;
};

}  // namespace ds3::cuda
