// The CUDA backend: buffers from a caching pool, resident weights, and the dispatch of
// every op to the launchers of kernels.h. Host code only; kernels live in kernels.cu.
#include "backends/cuda/cuda_backend.h"
#include "backends/cuda/branches.h"

#include <cuda_runtime.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <cstring>
#include <map>
#include <unordered_map>
#include <vector>

#include "backends/cuda/check.h"
#include "backends/cuda/gemv_q8.h"
#include "backends/cuda/kernels.h"
#include "backends/cuda/pool.h"
#include "backends/cuda/resident.h"
#include "runtime/error.h"
#include "runtime/kv_cache.h"

namespace ds3 {

namespace {

using cuda::CudaBuffer;
using cuda::Pool;
using cuda::Scratch;
using cuda::wtype;
using cuda::wtype_of;

// Launch errors (bad configuration) surface here; faults inside kernels at the next sync.
void launched(const std::string& what) {
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) throw Error("cuda", what + ": kernel launch failed: " + cudaGetErrorString(e));
}

float* f32(Buffer* b) { return static_cast<float*>(static_cast<CudaBuffer*>(b)->dev()); }
const int32_t* i32(Buffer* b) { return static_cast<const int32_t*>(static_cast<CudaBuffer*>(b)->dev()); }

bool plain_float(TypeId t) { return t == TypeId::F32 || t == TypeId::BF16 || t == TypeId::F16; }

// A matrix the GEMV/GEMM/get_rows kernels can read: a known type and whole blocks per row.
bool matrix_ok(const Weight& w) {
    auto t = wtype_of(w.type);
    return t && w.ne[0] % cuda::wtype_block(*t) == 0;
}

class CudaBackend final : public Backend {
public:
    CudaBackend(const BackendOptions&, std::string name) : name_(std::move(name)) {
        int count = 0;
        cudaError_t e = cudaGetDeviceCount(&count);
        if (e != cudaSuccess || count == 0) {
            cudaGetLastError();
            throw Error("cuda", std::string("no CUDA device is available (") +
                                    (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices") + ")");
        }
        if (const char* env = std::getenv("DS3_CUDA_DEVICE")) device_ = std::atoi(env);
        check(device_ >= 0 && device_ < count, "cuda",
              "DS3_CUDA_DEVICE=" + std::to_string(device_) + " but " + std::to_string(count) + " devices exist");
        DS3_CU(cudaSetDevice(device_));
        DS3_CU(cudaDeviceGetAttribute(&n_sm_, cudaDevAttrMultiProcessorCount, device_));
        DS3_CU(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        DS3_CU(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
        DS3_CU(cudaMalloc(&err_, sizeof(cuda::DevError)));
        DS3_CU(cudaMallocHost(&err_host_, sizeof(cuda::DevError)));
        DS3_CU(cudaMemsetAsync(err_, 0, sizeof(cuda::DevError), stream_));
        DS3_CU(cudaStreamSynchronize(stream_));
        pool_ = std::make_shared<Pool>();
        weights_ = std::make_unique<cuda::Resident>(*pool_, stream_);
        if (const char* p = std::getenv("DS3_CUDA_PROFILE")) {
            prof_level_ = std::atoi(p);
            prof_ = prof_level_ != 0;
        }
        if (const char* p = std::getenv("DS3_CUDA_GRAPHS")) graphs_ = std::atoi(p) != 0;
        if (const char* p = std::getenv("DS3_CUDA_STEP_TIMES")) step_times_ = std::atoi(p) != 0;
        if (const char* p = std::getenv("DS3_CUDA_NORM_Q8")) norm_q8_ = std::atoi(p) != 0;
        if (const char* p = std::getenv("DS3_CUDA_STREAMS")) streams_ = std::atoi(p) != 0;
        if (const char* p = std::getenv("DS3_CUDA_PDL_BATCH")) pdl_batch_off_ = std::atoi(p) == 0;
    }

    ~CudaBackend() override {
        cudaStreamSynchronize(stream_);
        execs_.clear();
        if (prof_) {
            prof_collect();
            prof_print();
            for (auto& [a, b] : prof_events_) cudaEventDestroy(a), cudaEventDestroy(b);
            for (cudaEvent_t ev : sub_events_) cudaEventDestroy(ev);
        }
        if (step_times_ && steps_.n > 0) {
            const double n = static_cast<double>(steps_.n);
            std::fprintf(stderr,
                         "cuda: %lld replayed steps, host µs per step: before the launch %.1f, launch %.1f, "
                         "wait %.1f, after %.1f\n",
                         static_cast<long long>(steps_.n), steps_.before / n, steps_.launch / n, steps_.wait / n,
                         steps_.after / n);
        }
        weights_.reset();
        cudaFree(err_);
        cudaFreeHost(err_host_);
        cudaStreamDestroy(side_);
        cudaStreamDestroy(stream_);
    }

    const std::string& name() const override { return name_; }

    bool supports(const Node& n) const override {
        // Gains and the router bias are read element-wise: plain floats only. Matrices:
        // the plain floats and the block formats of quant.cuh.
        for (size_t i = 0; i < n.w.size(); ++i) {
            const Weight* w = n.w[i];
            if (!w) continue;
            const bool elementwise = n.op == Op::rms_norm || (n.op == Op::moe_route && i == 1);
            if (elementwise ? !plain_float(w->type) : !matrix_ok(*w)) return false;
        }
        switch (n.op) {
            case Op::rope_yarn:
                return n.rope && n.rope_dim / 2 <= cuda::kMaxRopeHalf &&
                       static_cast<int>(n.rope->inv_freq.size()) >= n.rope_dim / 2;
            case Op::mla_attn:
                return n.attn.kv_lora + n.attn.qk_rope <= cuda::kMlaMaxWidth;
            case Op::moe_route:
                return n.route.n_expert <= cuda::kMaxExperts && n.route.n_used <= 32 && n.route.n_group >= 1 &&
                       n.route.n_expert % n.route.n_group == 0;
            case Op::moe_ffn:
                // Gate and up share a kernel (one type); down may differ (Q4_K_M's Q6_K).
                return n.route.n_expert <= cuda::kMaxExperts && n.w.size() == 3 && n.w[0]->type == n.w[1]->type;
            default:
                return true;
        }
    }

    std::unique_ptr<Buffer> alloc(size_t bytes) override { return std::make_unique<CudaBuffer>(pool_, bytes); }

    void upload(Buffer& dst, size_t offset, const void* src, size_t n) override {
        check(offset + n <= dst.size(), "cuda", "upload past the end of a buffer");
        DS3_CU(cudaMemcpyAsync(static_cast<uint8_t*>(static_cast<CudaBuffer&>(dst).dev()) + offset, src, n,
                               cudaMemcpyHostToDevice, stream_));
    }

    void download(const Buffer& src, size_t offset, void* dst, size_t n) override {
        check(offset + n <= src.size(), "cuda", "download past the end of a buffer");
        DS3_CU(cudaMemcpyAsync(dst, static_cast<const uint8_t*>(static_cast<const CudaBuffer&>(src).dev()) + offset,
                               n, cudaMemcpyDeviceToHost, stream_));
        synchronize();
    }

    // One wait: the error word comes back in it, through pinned memory (a second copy
    // and wait after the step cost ~10 µs of every decode step).
    void synchronize() override {
        DS3_CU(cudaMemcpyAsync(err_host_, err_, sizeof *err_host_, cudaMemcpyDeviceToHost, stream_));
        DS3_CU(cudaStreamSynchronize(stream_));
        if (prof_) prof_collect();
        const cuda::DevError e = *err_host_;
        if (e.code == 0) return;
        DS3_CU(cudaMemsetAsync(err_, 0, sizeof e, stream_));
        DS3_CU(cudaStreamSynchronize(stream_));
        if (e.code == 1)
            throw Error("cuda", "token id " + std::to_string(e.value) + " outside [0, " + std::to_string(e.limit) + ")");
        if (e.code == 3)
            throw Error("kv_cache", "position " + std::to_string(e.value) + " outside the context of " +
                                        std::to_string(e.limit) + " tokens");
        throw Error("cuda", "expert id " + std::to_string(e.value) + " out of range [0, " + std::to_string(e.limit) + ")");
    }

    void compute(const Node& n, std::span<Buffer* const> in, Buffer& out_buf, Buffer* state) override {
        use_device();
        const auto t0 = std::chrono::steady_clock::now();
        if (prof_) prof_begin();
        // A batch's ops launch without dependent launch (kernels.h), decode-sized ones with.
        struct Suspend {
            explicit Suspend(bool on) { cuda::set_pdl_suspended(on); }
            ~Suspend() { cuda::set_pdl_suspended(false); }
        } suspend(n.rows > 8 && pdl_batch_off_);
        compute_op(n, in, out_buf, state);
        if (prof_) prof_end(n, t0);
    }

    // Decode steps (every node ≤ 8 rows) run from a CUDA graph: the first time a graph of
    // this structure is seen it runs node by node (uploading weights, setting kernel
    // attributes), the second time its launches are captured, and from then on each step
    // is one cudaGraphLaunch plus the input copies. Activations live in an arena owned by
    // the captured graph, and the kernels read positions and token ids from device memory,
    // so a replay at a new position needs no new parameters. Prefill, profiling and
    // DS3_CUDA_GRAPHS=0 take the scheduler's node-by-node path.
    bool run_graph(const Graph& g, std::span<const GraphInput> inputs, KvCache* cache, std::span<const int> fetch,
                   std::map<int, std::vector<float>>& results) override {
        if (!graphs_ || prof_) return false;
        for (const Node& n : g.nodes()) {
            if (n.rows > 8) return false;  // prefill: moe_ffn groups tokens on the host
            if (n.op == Op::mla_attn && (n.src.size() < 4 || !cache)) return false;
        }
        use_device();
        const auto t_enter = std::chrono::steady_clock::now();
        if (stale_graphs_) {
            DS3_CU(cudaStreamSynchronize(stream_));
            execs_.clear();
            stale_graphs_ = false;
        }
        for (int id : fetch) check(id >= 0 && id < g.size(), "cuda", "run_graph: fetch of an unknown node");
        GraphExec& e = exec_for(g, cache, fetch);
        // The inputs go to the step's pinned slots; a captured step copies them from there
        // itself (its first nodes), so a replay is one launch.
        for (const GraphInput& in : inputs) {
            check(in.node >= 0 && in.node < g.size() && in.data, "cuda", "run_graph: an input has no data");
            std::memcpy(e.input_slot(in.node), in.data, g.node(in.node).nbytes());
        }
        for (const auto& slot : e.inputs)
            check(std::any_of(inputs.begin(), inputs.end(), [&](const GraphInput& in) { return in.node == slot.first; }),
                  "cuda", "run_graph: input node " + g.node(slot.first).name + " has no data");
        const bool timed = step_times_ && e.exec;
        const auto t_launch = std::chrono::steady_clock::now();
        if (e.exec) {
            DS3_CU(cudaGraphLaunch(e.exec, stream_));
        } else if (e.runs == 0 || e.eager_only) {
            copy_inputs(g, e);
            record(g, e, cache);
        } else {
            capture(g, e, cache);
            DS3_CU(cudaGraphLaunch(e.exec, stream_));
        }
        ++e.runs;
        // Results come back through pinned memory (a pageable copy of the logits costs tens
        // of µs per step) in the same wait as the step itself.
        size_t at = 0;
        for (int id : fetch) {
            const Node& n = g.node(id);
            DS3_CU(cudaMemcpyAsync(e.output_slot(at), e.at(id), n.nbytes(), cudaMemcpyDeviceToHost, stream_));
            at += n.nbytes();
        }
        const auto t_launched = std::chrono::steady_clock::now();
        synchronize();
        const auto t_synced = std::chrono::steady_clock::now();
        at = 0;
        for (int id : fetch) {
            const Node& n = g.node(id);
            const float* p = e.output_slot(at);
            results[id].assign(p, p + n.n_elements());
            at += n.nbytes();
        }
        if (timed) {
            const auto t_exit = std::chrono::steady_clock::now();
            auto us = [](auto a, auto b) { return std::chrono::duration<double, std::micro>(b - a).count(); };
            steps_.before += us(t_enter, t_launch);
            steps_.launch += us(t_launch, t_launched);
            steps_.wait += us(t_launched, t_synced);
            steps_.after += us(t_synced, t_exit);
            ++steps_.n;
        }
        return true;
    }

private:
    void use_device() {
        // cudaSetDevice costs a driver call: only when this thread is on another device.
        thread_local int current = -1;
        if (current != device_) {
            DS3_CU(cudaSetDevice(device_));
            current = device_;
        }
    }

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
        cudaGraphExec_t exec = nullptr;
        int runs = 0;
        bool eager_only = false;  // the capture failed once: run node by node

        float* at(int i) const { return static_cast<float*>(views[static_cast<size_t>(i)]->dev()); }
        // Pinned host memory: the input nodes' data (where a captured step copies it from),
        // then the fetched results, in fetch order.
        uint8_t* host = nullptr;
        std::vector<std::pair<int, size_t>> inputs;  // (input node, offset in host)
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

    // What makes two graphs replay the same: every node's op, shape, inputs, weights and
    // parameters except the position (which the kernels read from the device), the
    // cache buffers, and what is fetched.
    uint64_t graph_key(const Graph& g, KvCache* cache, std::span<const int> fetch) {
        std::vector<uint64_t> v;
        v.reserve(static_cast<size_t>(g.size()) * 16 + fetch.size());
        auto f = [](float x) {
            uint32_t u;
            std::memcpy(&u, &x, 4);
            return static_cast<uint64_t>(u);
        };
        for (const Node& n : g.nodes()) {
            v.push_back(static_cast<uint64_t>(n.op) | static_cast<uint64_t>(n.type) << 8 |
                        static_cast<uint64_t>(n.layer + 1) << 16 | static_cast<uint64_t>(n.last_only) << 48);
            v.insert(v.end(), {static_cast<uint64_t>(n.rows), static_cast<uint64_t>(n.cols),
                               static_cast<uint64_t>(n.src_rows), static_cast<uint64_t>(n.src_cols),
                               static_cast<uint64_t>(n.col0), f(n.eps)});
            for (int src : n.src) v.push_back(static_cast<uint64_t>(src));
            for (const Weight* w : n.w)
                v.push_back(w ? reinterpret_cast<uintptr_t>(w->data) ^ static_cast<uint64_t>(w->type) << 56 : 0);
            switch (n.op) {
                case Op::rope_yarn:
                    v.insert(v.end(), {static_cast<uint64_t>(n.n_head), static_cast<uint64_t>(n.head_dim),
                                       static_cast<uint64_t>(n.rope_offset), static_cast<uint64_t>(n.rope_dim),
                                       reinterpret_cast<uintptr_t>(n.rope.get())});
                    break;
                case Op::mla_attn: {
                    const AttnParams& a = n.attn;
                    v.insert(v.end(), {static_cast<uint64_t>(a.n_head), static_cast<uint64_t>(a.qk_nope),
                                       static_cast<uint64_t>(a.qk_rope), static_cast<uint64_t>(a.v_head),
                                       static_cast<uint64_t>(a.kv_lora), f(a.scale)});
                    Buffer& c = cache->layer(n.layer, *this);
                    v.push_back(reinterpret_cast<uintptr_t>(static_cast<CudaBuffer&>(c).dev()));
                    v.push_back(c.size());
                    break;
                }
                case Op::moe_route:
                case Op::moe_ffn: {
                    const RouteParams& r = n.route;
                    v.insert(v.end(), {static_cast<uint64_t>(r.n_expert), static_cast<uint64_t>(r.n_used),
                                       static_cast<uint64_t>(r.n_group), static_cast<uint64_t>(r.topk_group),
                                       static_cast<uint64_t>(r.scoring), static_cast<uint64_t>(r.method),
                                       static_cast<uint64_t>(r.norm_topk), f(r.scale),
                                       XXH3_64bits(n.experts.data(), n.experts.size())});
                    break;
                }
                default:
                    break;
            }
        }
        v.push_back(~uint64_t{0});
        for (int id : fetch) v.push_back(static_cast<uint64_t>(id));
        return XXH3_64bits(v.data(), v.size() * sizeof(uint64_t));
    }

    GraphExec& exec_for(const Graph& g, KvCache* cache, std::span<const int> fetch) {
        const uint64_t key = graph_key(g, cache, fetch);
        for (auto it = execs_.begin(); it != execs_.end(); ++it)
            if ((*it)->key == key) {
                if (it != execs_.begin()) std::rotate(execs_.begin(), it, std::next(it));  // most recent first
                return *execs_.front();
            }
        // A few shapes at once (decode, and 2..8-token batches); the least recent goes.
        if (execs_.size() >= 4) {
            DS3_CU(cudaStreamSynchronize(stream_));
            execs_.pop_back();
        }
        auto e = std::make_unique<GraphExec>();
        e->key = key;
        e->pool = pool_;
        size_t total = 0;
        e->offset.resize(static_cast<size_t>(g.size()));
        for (int i = 0; i < g.size(); ++i) {
            e->offset[static_cast<size_t>(i)] = total;
            total += (std::max<uint64_t>(g.node(i).nbytes(), 4) + 255) / 256 * 256;
        }
        // Each RMS norm also writes its output quantised for the integer GEMVs that read it.
        e->q8.assign(static_cast<size_t>(g.size()), 0);
        for (int i = 0; i < g.size() && norm_q8_; ++i) {
            const Node& n = g.node(i);
            if (n.op != Op::rms_norm || n.cols % 32 != 0) continue;
            e->q8[static_cast<size_t>(i)] = total;
            total += (cuda::q8_rows_bytes(n.rows, n.cols) + 255) / 256 * 256;
        }
        void* arena = nullptr;
        cudaError_t err = cudaMalloc(&arena, total);
        if (err != cudaSuccess) {
            cudaGetLastError();
            pool_->trim();
            DS3_CU(cudaMalloc(&arena, total));
        }
        e->arena = arena;
        e->alias.assign(static_cast<size_t>(g.size()), 0);
        for (int i = 0; i < g.size(); ++i) {
            const Node& n = g.node(i);
            void* p = static_cast<uint8_t*>(arena) + e->offset[static_cast<size_t>(i)];
            // A column range of one row is contiguous in its source: the view is an alias
            // (no copy kernel), valid because no slot of the arena is written twice.
            if (n.op == Op::view && (n.rows == 1 || (n.col0 == 0 && n.cols == n.src_cols))) {
                p = e->at(n.src[0]) + n.col0;
                e->alias[static_cast<size_t>(i)] = 1;
            }
            e->views.push_back(std::make_unique<CudaBuffer>(p, n.nbytes()));
        }
        size_t host_bytes = 0;
        for (int i = 0; i < g.size(); ++i)
            if (g.node(i).op == Op::input) {
                e->inputs.emplace_back(i, host_bytes);
                host_bytes += (g.node(i).nbytes() + 15) / 16 * 16;
            }
        e->out_offset = host_bytes;
        for (int id : fetch) host_bytes += g.node(id).nbytes();
        DS3_CU(cudaMallocHost(reinterpret_cast<void**>(&e->host), std::max<size_t>(host_bytes, 16)));
        execs_.insert(execs_.begin(), std::move(e));
        return *execs_.front();
    }

    // The inputs from their pinned slots to the arena (captured: the step's first nodes).
    void copy_inputs(const Graph& g, const GraphExec& e) {
        for (const auto& [id, off] : e.inputs)
            DS3_CU(cudaMemcpyAsync(e.at(id), e.host + off, g.node(id).nbytes(), cudaMemcpyHostToDevice, stream_));
    }

    // The residual adds of a layer and the RMS norm after them as one kernel: add → rms_norm
    // (attention residual, then ffn_norm), or add → add → rms_norm (shared + routed experts,
    // residual, next layer's attn_norm). Returns the nodes it would cover (0: no match).
    static int match_add_norm(const Graph& g, int i) {
        auto is = [&](int j, Op op) { return j < g.size() && g.node(j).op == op; };
        const Node& a = g.node(i);
        if (a.op != Op::add) return 0;
        int j = i + 1;
        const Node* second = nullptr;
        if (is(j, Op::add) && g.node(j).src.size() == 2 && (g.node(j).src[0] == i || g.node(j).src[1] == i)) {
            second = &g.node(j);
            ++j;
        }
        const int last_add = second ? i + 1 : i;
        if (!is(j, Op::rms_norm) || g.node(j).src[0] != last_add) return 0;
        const Node& norm = g.node(j);
        if (norm.rows != a.rows || norm.cols != a.cols || (second && second->cols != a.cols)) return 0;
        return j - i + 1;
    }
    void launch_add_norm(const Graph& g, GraphExec& e, int i, int covered) {
        const Node& a = g.node(i);
        const bool second = covered == 3;
        const int last_add = second ? i + 1 : i, j = i + covered - 1;
        const Node& norm = g.node(j);
        const Node* b = second ? &g.node(i + 1) : nullptr;
        const float* other = b ? e.at(b->src[0] == i ? b->src[1] : b->src[0]) : nullptr;
        cuda::add_rms_norm(e.at(a.src[0]), e.at(a.src[1]), other, second ? e.at(i) : nullptr, e.at(last_add),
                           weight(*norm.w[0]), wtype(norm.w[0]->type), norm.eps, norm.rows, norm.cols, e.at(j), stream_,
                           quantised_copy(e, j, norm));
        launched(norm.name);
    }

    // The slot of norm node j's quantised output (null: none), registered so that the
    // products reading that output use it (gemv_scratch).
    void* quantised_copy(GraphExec& e, int j, const Node& norm) {
        const size_t off = e.q8[static_cast<size_t>(j)];
        if (!off) return nullptr;
        void* q = static_cast<uint8_t*>(e.arena) + off;
        quantised_.push_back({e.at(j), q, norm.rows, norm.cols});
        return q;
    }

    // Enqueues every node of g on the stream (eagerly, or into a capture). Captured steps
    // put independent branches on a second stream (branches.h) unless DS3_CUDA_STREAMS=0.
    void record(const Graph& g, GraphExec& e, KvCache* cache, bool capturing = false) {
        std::vector<Buffer*> in;
        std::vector<int> srcs;
        quantised_.clear();
        const bool two = capturing && streams_;
        if (two) branches_.begin(stream_, side_, g.size());
        // The node whose launch makes j's data (a view that aliases its source is no
        // launch); -1 for graph inputs, which are copied before the step starts.
        auto producer = [&](int j) {
            while (e.alias[static_cast<size_t>(j)]) j = g.node(j).src[0];
            return g.node(j).op == Op::input ? -1 : j;
        };
        // Launches nodes [first, last] as one unit, on the stream Branches picks.
        auto unit = [&](int first, int last, auto&& launch) {
            if (!two) return launch();
            srcs.clear();
            for (int k = first; k <= last; ++k)
                for (int src : g.node(k).src)
                    if (const int p = producer(src); p >= 0 && (p < first || p > last)) srcs.push_back(p);
            const cudaStream_t main = stream_;
            stream_ = branches_.place(srcs);
            try {
                launch();
            } catch (...) {
                stream_ = main;
                throw;
            }
            stream_ = main;
            branches_.done(first, last);
        };
        for (int i = 0; i < g.size(); ++i) {
            const Node& n = g.node(i);
            if (n.op == Op::input || e.alias[static_cast<size_t>(i)]) continue;
            if (const int covered = match_add_norm(g, i)) {
                unit(i, i + covered - 1, [&] { launch_add_norm(g, e, i, covered); });
                i += covered - 1;
                continue;
            }
            if (n.op == Op::rms_norm) {  // with its quantised copy
                unit(i, i, [&] {
                    rms_norm(n, e.at(n.src[0]), e.at(i), quantised_copy(e, i, n));
                    launched(n.name);
                });
                continue;
            }
            in.clear();
            for (int src : n.src) in.push_back(e.views[static_cast<size_t>(src)].get());
            Buffer* state = n.op == Op::mla_attn ? &cache->layer(n.layer, *this) : nullptr;
            unit(i, i, [&] { compute_op(n, in, *e.views[static_cast<size_t>(i)], state); });
        }
        if (two) branches_.join();
        quantised_.clear();
    }

    void capture(const Graph& g, GraphExec& e, KvCache* cache) {
        // Relaxed: the pool may cudaMalloc a scratch block it has not made yet.
        DS3_CU(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
        pool_->hold(&e.held);
        cudaGraph_t graph = nullptr;
        try {
            copy_inputs(g, e);
            record(g, e, cache, true);
        } catch (...) {
            pool_->hold(nullptr);
            cudaStreamEndCapture(stream_, &graph);
            if (graph) cudaGraphDestroy(graph);
            cudaGetLastError();
            throw;
        }
        pool_->hold(nullptr);
        DS3_CU(cudaStreamEndCapture(stream_, &graph));
        const cudaError_t err = cudaGraphInstantiate(&e.exec, graph, 0);
        cudaGraphDestroy(graph);
        if (err != cudaSuccess) {
            // Run node by node from now on rather than fail the step.
            cudaGetLastError();
            e.exec = nullptr;
            e.eager_only = true;
            copy_inputs(g, e);
            record(g, e, cache);
        }
    }

    void compute_op(const Node& n, std::span<Buffer* const> in, Buffer& out_buf, Buffer* state) {
        float* out = f32(&out_buf);
        switch (n.op) {
            case Op::input:
                return;
            case Op::get_rows: {
                const Weight& w = *n.w[0];
                const cuda::Resident::Entry& r = resident(w);
                cuda::get_rows(r.ptr, r.wt, w.ne[0], w.ne[1], i32(in[0]), n.rows, out, err_, stream_);
                break;
            }
            case Op::rms_norm:
                rms_norm(n, f32(in[0]), out);
                break;
            case Op::mul_mat:
                matmul(*n.w[0], f32(in[0]), n.rows, out);
                break;
            case Op::add:
                cuda::add(f32(in[0]), f32(in[1]), n.n_elements(), out, stream_);
                break;
            case Op::swiglu:
                cuda::swiglu(f32(in[0]), f32(in[1]), n.n_elements(), out, stream_);
                break;
            case Op::view:
                cuda::copy2d(f32(in[0]) + n.col0, n.src_cols, out, n.cols, n.rows, n.cols, stream_);
                break;
            case Op::rope_yarn:
                rope(n, f32(in[0]), i32(in[1]), out);
                break;
            case Op::mla_attn:
                check(state != nullptr, "cuda", n.name + ": mla_attn needs the latent cache");
                mla_attn(n, f32(in[0]), f32(in[1]), f32(in[2]), in.size() > 3 ? i32(in[3]) : nullptr, *state, out);
                break;
            case Op::moe_route:
                moe_route(n, f32(in[0]), out);
                break;
            case Op::moe_ffn:
                moe_ffn(n, f32(in[0]), f32(in[1]), out);
                break;
            case Op::shared_ffn:
                shared_ffn(n, f32(in[0]), out);
                break;
            case Op::logits: {
                const float* x = f32(in[0]) + (n.last_only ? (n.src_rows - 1) * n.src_cols : 0);
                matmul(*n.w[0], x, n.rows, out);
                break;
            }
            default:
                throw Error("cuda", n.name + ": unknown op");
        }
        launched(n.name);
    }

    // DS3_CUDA_PROFILE=1: GPU time (events around each node) and host time (inside
    // compute) per op kind, summed over the backend's life and printed to stderr at its
    // end. The events are read back when the backend next synchronises.
    struct ProfRow {
        int64_t calls = 0;
        double gpu_ms = 0, host_ms = 0;
    };
    void prof_begin() {
        if (prof_used_ == prof_events_.size()) {
            cudaEvent_t a, b;
            DS3_CU(cudaEventCreate(&a));
            DS3_CU(cudaEventCreate(&b));
            prof_events_.push_back({a, b});
        }
        DS3_CU(cudaEventRecord(prof_events_[prof_used_].first, stream_));
    }
    void prof_end(const Node& n, std::chrono::steady_clock::time_point t0) {
        DS3_CU(cudaEventRecord(prof_events_[prof_used_].second, stream_));
        // Decode-sized nodes apart from prefill ones: their costs differ by orders of magnitude.
        std::string kind = op_name(n.op);
        kind += n.rows <= 8 ? " (<=8 rows)" : " (>8 rows)";
        prof_pending_.push_back(kind);
        ++prof_used_;
        ProfRow& r = prof_rows_[kind];
        ++r.calls;
        r.host_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    }
    // DS3_CUDA_PROFILE=2 also times the kernels inside the fused ops (rows "  mla.kb", ...):
    // sub_start() where an op begins, sub_mark(label) after each of its kernels.
    cudaEvent_t sub_event() {
        if (sub_used_ == sub_events_.size()) {
            cudaEvent_t ev;
            DS3_CU(cudaEventCreate(&ev));
            sub_events_.push_back(ev);
        }
        cudaEvent_t ev = sub_events_[sub_used_++];
        DS3_CU(cudaEventRecord(ev, stream_));
        return ev;
    }
    void sub_start(int64_t rows) {
        if (prof_level_ < 2) return;
        sub_prev_ = sub_event();
        sub_small_ = rows <= 8;
    }
    void sub_mark(const char* label) {
        if (prof_level_ < 2 || !sub_prev_) return;
        cudaEvent_t ev = sub_event();
        sub_pending_.push_back({sub_prev_, ev, label, sub_small_});
        sub_prev_ = ev;
    }
    struct SubSpan {
        cudaEvent_t a, b;
        const char* label;
        bool small;
    };

    void prof_collect() {
        for (const SubSpan& sp : sub_pending_) {
            float ms = 0;
            ProfRow& r = prof_rows_[std::string("  ") + sp.label + (sp.small ? " (<=8 rows)" : " (>8 rows)")];
            ++r.calls;
            if (cudaEventElapsedTime(&ms, sp.a, sp.b) == cudaSuccess)
                r.gpu_ms += ms;
            else
                cudaGetLastError();
        }
        sub_pending_.clear();
        sub_used_ = 0;
        sub_prev_ = nullptr;
        for (size_t i = 0; i < prof_used_; ++i) {
            float ms = 0;
            if (cudaEventElapsedTime(&ms, prof_events_[i].first, prof_events_[i].second) == cudaSuccess)
                prof_rows_[prof_pending_[i]].gpu_ms += ms;
            else
                cudaGetLastError();
        }
        prof_used_ = 0;
        prof_pending_.clear();
    }
    void prof_print() {
        double g = 0, h = 0;
        for (auto& [k, r] : prof_rows_) g += r.gpu_ms, h += r.host_ms;
        std::fprintf(stderr, "cuda profile: %-24s %8s %10s %10s\n", "op", "calls", "gpu ms", "host ms");
        for (auto& [k, r] : prof_rows_)
            std::fprintf(stderr, "cuda profile: %-24s %8lld %10.3f %10.3f\n", k.c_str(), static_cast<long long>(r.calls),
                         r.gpu_ms, r.host_ms);
        std::fprintf(stderr, "cuda profile: %-24s %8s %10.3f %10.3f\n", "total", "", g, h);
    }

    // The resident copy of w, and (resident) with the type its kernels read it as: one
    // lookup (a fingerprint of the host bytes) per weight and use.
    const void* weight(const Weight& w) { return resident(w).ptr; }
    const cuda::Resident::Entry& resident(const Weight& w) {
        bool replaced = false;
        const cuda::Resident::Entry& e = weights_->get(w, replaced);
        if (replaced) stale_graphs_ = true;
        return e;
    }

    // yq: also y quantised there for the integer GEMVs (add_rms_norm).
    void rms_norm(const Node& n, const float* x, float* y, void* yq = nullptr) {
        cuda::add_rms_norm(x, nullptr, nullptr, nullptr, nullptr, weight(*n.w[0]), wtype(n.w[0]->type), n.eps, n.rows,
                           n.cols, y, stream_, yq);
    }

    void matmul(const Weight& w, const float* x, int64_t rows, float* y) {
        cuda::GemmArgs a;
        a.x = x;
        a.ldx = w.ne[0];
        const cuda::Resident::Entry& r = resident(w);
        a.w = r.ptr;
        a.wt = r.wt;
        a.y = y;
        a.ldy = w.ne[1];
        a.M = rows;
        a.N = w.ne[1];
        a.K = w.ne[0];
        std::optional<Scratch> sq;
        gemv_scratch(a, sq);
        cuda::gemm(a, stream_);
    }

    // The integer GEMV's scratch for `a` (its activation rows quantised), held in `slot`
    // until the product is enqueued; none where the f32 kernels run (gemv_scratch_bytes 0).
    // Where a norm of the step being recorded already quantised exactly these rows, the
    // product reads that copy and needs no scratch.
    void gemv_scratch(cuda::GemmArgs& a, std::optional<Scratch>& slot) {
        if (const size_t n = cuda::gemv_scratch_bytes(a.wt, a.M, a.K, a.batch)) {
            a.xq = a.batch == 1 && a.ldx == a.K ? quantised(a.x, a.M, a.K) : nullptr;
            if (!a.xq) a.scratch = slot.emplace(*pool_, n).f();
        }
    }
    const void* quantised(const float* x, int64_t rows, int64_t cols) const {
        for (const Quantised& q : quantised_)
            if (q.x == x && q.rows == rows && q.cols == cols) return q.q;
        return nullptr;
    }

    void rope(const Node& n, const float* x, const int32_t* pos, float* y) {
        cuda::RopeArgs a;
        a.rows = n.rows;
        a.cols = n.cols;
        a.n_head = n.n_head;
        a.head_dim = n.head_dim;
        a.rope_offset = n.rope_offset;
        a.rope_dim = n.rope_dim;
        a.attn_factor = n.rope->attn_factor;
        std::copy_n(n.rope->inv_freq.begin(), n.rope_dim / 2, a.inv_freq);
        cuda::rope_rows(a, pos, x, y, stream_);
    }

    void mla_attn(const Node& n, const float* q, const float* latent, const float* k_pe, const int32_t* positions,
                  Buffer& cache_buf, float* out) {
        const AttnParams& p = n.attn;
        const int64_t T = n.rows, H = p.n_head, width = p.kv_lora + p.qk_rope, qdim = p.qk_nope + p.qk_rope;
        const int64_t n_ctx = static_cast<int64_t>(cache_buf.size() / 4) / width;
        if (p.pos0 < 0 || p.pos0 + T > n_ctx)
            throw Error("kv_cache", n.name + ": positions " + std::to_string(p.pos0) + ".." +
                                        std::to_string(p.pos0 + T - 1) + " exceed the context of " +
                                        std::to_string(n_ctx) + " tokens");
        float* cache = f32(&cache_buf);
        // The kernels read positions from the device (a replayed graph moves on by itself);
        // a node built without the positions input gets them made from attn.pos0.
        std::optional<Scratch> made;
        if (!positions) {
            std::vector<int32_t> pos(static_cast<size_t>(T));
            for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(p.pos0 + t);
            made.emplace(*pool_, pos.size() * 4);
            DS3_CU(cudaMemcpyAsync(made->i(), pos.data(), pos.size() * 4, cudaMemcpyHostToDevice, stream_));
            DS3_CU(cudaStreamSynchronize(stream_));  // pos is about to go out of scope
            positions = made->i();
        }
        sub_start(T);
        cuda::mla_store(cache, width, n_ctx, latent, k_pe, p.kv_lora, p.qk_rope, positions, T, err_, stream_);
        sub_mark("mla.store");

        const Weight& k_b = *n.w[0];  // [qk_nope, kv_lora, H]
        const Weight& v_b = *n.w[1];  // [kv_lora, v_head, H]
        Scratch q_abs(*pool_, static_cast<size_t>(T * H * p.kv_lora) * 4);
        // q_abs[t][h] = W_kb[h]ᵀ q_nope[t][h]: a GEMM per head; the attention reads q_pe in place.
        cuda::GemmArgs a;
        a.x = q;
        a.ldx = H * qdim;
        a.x_bstride = qdim;
        const cuda::Resident::Entry& kb = resident(k_b);
        a.w = kb.ptr;
        a.wt = kb.wt;
        a.w_bstride = static_cast<int64_t>(k_b.row_bytes()) * p.kv_lora;
        a.y = q_abs.f();
        a.ldy = H * p.kv_lora;
        a.y_bstride = p.kv_lora;
        a.M = T;
        a.N = p.kv_lora;
        a.K = p.qk_nope;
        a.batch = static_cast<int>(H);
        // Decode: the per-head products on the integer GEMV (each head's q row quantised).
        std::optional<Scratch> sa, sb;
        gemv_scratch(a, sa);
        cuda::gemm(a, stream_);
        sub_mark("mla.k_b");

        // Decode: a launch shape fixed by the context size, the same at every position.
        const cuda::MlaPlan plan = T <= 8 ? cuda::mla_plan_decode(static_cast<int>(H), T, n_ctx, p.kv_lora, n_sm_)
                                          : cuda::mla_plan(static_cast<int>(H), T, p.pos0 + T, p.kv_lora, n_sm_);
        Scratch ctx(*pool_, static_cast<size_t>(T * H * p.kv_lora) * 4);
        Scratch part(*pool_, static_cast<size_t>(cuda::mla_scratch_floats(plan, static_cast<int>(H), p.kv_lora)) * 4);
        // One query: the merge also quantises ctx for v_b's integer GEMV (no launch of its own).
        const cuda::Resident::Entry& vb = resident(v_b);
        const size_t vq_bytes =
            T == 1 && p.kv_lora % 32 == 0
                ? cuda::gemv_scratch_bytes(vb.wt, 1, p.kv_lora, static_cast<int>(H))
                : 0;
        std::optional<Scratch> vq;
        if (vq_bytes) vq.emplace(*pool_, vq_bytes);
        cuda::mla_attend(plan, q_abs.f(), q + p.qk_nope, qdim, cache, width, n_ctx, p.kv_lora, static_cast<int>(H), T,
                         positions, p.scale, ctx.f(), part.f(), stream_, vq ? vq->f() : nullptr);
        sub_mark("mla.attend");

        // out[t][h] = W_vb[h] ctx[t][h]: a GEMM per head.
        cuda::GemmArgs b;
        b.x = ctx.f();
        b.ldx = H * p.kv_lora;
        b.x_bstride = p.kv_lora;
        b.w = vb.ptr;
        b.wt = vb.wt;
        b.w_bstride = static_cast<int64_t>(v_b.row_bytes()) * p.v_head;
        b.y = out;
        b.ldy = H * p.v_head;
        b.y_bstride = p.v_head;
        b.M = T;
        b.N = p.v_head;
        b.K = p.kv_lora;
        b.batch = static_cast<int>(H);
        if (vq) b.xq = vq->f();
        else gemv_scratch(b, sb);
        cuda::gemm(b, stream_);
        sub_mark("mla.v_b");
    }

    void moe_route(const Node& n, const float* x, float* out) {
        const RouteParams& p = n.route;
        Scratch logits(*pool_, static_cast<size_t>(n.rows * p.n_expert) * 4);
        sub_start(n.rows);
        matmul(*n.w[0], x, n.rows, logits.f());
        sub_mark("route.gemv");
        cuda::RouteArgs a;
        a.T = n.rows;
        a.n_expert = p.n_expert;
        a.n_used = p.n_used;
        a.n_group = p.n_group;
        a.topk_group = p.topk_group;
        a.sigmoid = p.scoring == ScoringFunc::sigmoid;
        a.method = p.method == TopkMethod::greedy ? 0 : p.method == TopkMethod::group_limited_greedy ? 1 : 2;
        a.norm_topk = p.norm_topk;
        a.scale = p.scale;
        if (n.w.size() > 1 && n.w[1]) {
            a.bias = weight(*n.w[1]);
            a.bias_t = wtype(n.w[1]->type);
        }
        cuda::moe_route(a, logits.f(), out, stream_);
        sub_mark("route.topk");
    }

    cuda::MoeArgs moe_args(const Node& n) {
        cuda::MoeArgs a;
        a.T = n.rows;
        a.D = n.cols;
        a.F = n.w[0]->ne[1];
        a.n_used = n.route.n_used;
        a.n_expert = n.route.n_expert;
        const cuda::Resident::Entry &gate = resident(*n.w[0]), &down = resident(*n.w[2]);
        a.gate = gate.ptr;
        a.up = weight(*n.w[1]);
        a.down = down.ptr;
        check(n.w[0]->type == n.w[1]->type, "cuda",
              n.name + ": gate and up experts of different types are not supported (" +
                  std::string(type_traits(n.w[0]->type).name) + " vs " + std::string(type_traits(n.w[1]->type).name) +
                  ")");
        a.wt = gate.wt;
        a.wt_down = down.wt;
        for (int e = 0; e < n.route.n_expert; ++e)
            if (n.experts.empty() || n.experts[static_cast<size_t>(e)]) a.mask.bits[e / 32] |= 1u << (e % 32);
        return a;
    }

    // Decode (≤ 8 tokens): every (token, slot) pair reads its expert's rows, with no
    // host round trip. Prefill: the routes come back to the host, tokens are grouped
    // by expert, and each expert's weights are read once per batch (grouped GEMMs).
    void moe_ffn(const Node& n, const float* x, const float* route, float* out) {
        const cuda::MoeArgs a = moe_args(n);
        const int64_t T = n.rows, k = a.n_used;
        if (T <= 8) {
            cuda::MoeArgs ad = a;
            const size_t sb = cuda::moe_scratch_bytes(a);
            std::optional<Scratch> sq;
            if (sb) ad.scratch = sq.emplace(*pool_, sb).f();
            ad.xq = quantised(x, T, a.D);
            Scratch act(*pool_, static_cast<size_t>(T * k * a.F) * 4);
            Scratch y(*pool_, static_cast<size_t>(T * k * a.D) * 4);
            sub_start(T);
            cuda::moe_pairs_gate_up(ad, x, route, act.f(), err_, stream_);
            sub_mark("moe.gate_up");
            cuda::moe_pairs_down(ad, act.f(), route, y.f(), stream_);
            sub_mark("moe.down");
            cuda::moe_combine(ad, y.f(), route, nullptr, out, stream_);
            sub_mark("moe.combine");
            return;
        }
        std::vector<float> r(static_cast<size_t>(T * 2 * k));
        DS3_CU(cudaMemcpyAsync(r.data(), route, r.size() * 4, cudaMemcpyDeviceToHost, stream_));
        synchronize();
        std::vector<std::vector<int>> by_expert(static_cast<size_t>(a.n_expert));
        for (int64_t t = 0; t < T; ++t)
            for (int64_t j = 0; j < k; ++j) {
                const int e = static_cast<int>(r[static_cast<size_t>(t * 2 * k + k + j)]);
                if (e < 0 || e >= a.n_expert)
                    throw Error("cuda", n.name + ": expert id " + std::to_string(e) + " out of range");
                if (!n.experts.empty() && !n.experts[static_cast<size_t>(e)]) continue;
                by_expert[static_cast<size_t>(e)].push_back(static_cast<int>(t * k + j));
            }
        // Index block: groups [3·G], x_rows [P], pair_row [T·k].
        std::vector<int> groups, x_rows, pair_row(static_cast<size_t>(T * k), -1);
        int max_rows = 0;
        for (int e = 0; e < a.n_expert; ++e) {
            const auto& list = by_expert[static_cast<size_t>(e)];
            if (list.empty()) continue;
            groups.insert(groups.end(), {e, static_cast<int>(x_rows.size()), static_cast<int>(list.size())});
            max_rows = std::max(max_rows, static_cast<int>(list.size()));
            for (int pr : list) {
                pair_row[static_cast<size_t>(pr)] = static_cast<int>(x_rows.size());
                x_rows.push_back(static_cast<int>(pr / k));
            }
        }
        const int64_t P = static_cast<int64_t>(x_rows.size());
        const int G = static_cast<int>(groups.size() / 3);
        if (P == 0) {
            DS3_CU(cudaMemsetAsync(out, 0, n.nbytes(), stream_));
            return;
        }
        std::vector<int> idx;
        idx.reserve(groups.size() + x_rows.size() + pair_row.size());
        idx.insert(idx.end(), groups.begin(), groups.end());
        idx.insert(idx.end(), x_rows.begin(), x_rows.end());
        idx.insert(idx.end(), pair_row.begin(), pair_row.end());
        Scratch dev_idx(*pool_, idx.size() * 4);
        DS3_CU(cudaMemcpyAsync(dev_idx.i(), idx.data(), idx.size() * 4, cudaMemcpyHostToDevice, stream_));
        const int* d_groups = dev_idx.i();
        const int* d_x_rows = d_groups + groups.size();
        const int* d_pair_row = d_x_rows + x_rows.size();

        Scratch g(*pool_, static_cast<size_t>(P * a.F) * 4);
        Scratch u(*pool_, static_cast<size_t>(P * a.F) * 4);
        Scratch y(*pool_, static_cast<size_t>(P * a.D) * 4);
        cuda::GemmArgs ga;
        ga.x = x;
        ga.ldx = a.D;
        ga.wt = a.wt;
        ga.w_bstride = static_cast<int64_t>(n.w[0]->row_bytes()) * a.F;
        ga.ldy = a.F;
        ga.M = max_rows;
        ga.N = a.F;
        ga.K = a.D;
        ga.batch = G;
        ga.groups = d_groups;
        ga.x_rows = d_x_rows;
        ga.w = a.gate;
        ga.y = g.f();
        cuda::gemm(ga, stream_);
        ga.w = a.up;
        ga.y = u.f();
        cuda::gemm(ga, stream_);
        cuda::swiglu(g.f(), u.f(), P * a.F, g.f(), stream_);
        cuda::GemmArgs gd = ga;
        gd.x = g.f();
        gd.ldx = a.F;
        gd.x_rows = nullptr;
        gd.w = a.down;
        gd.wt = a.wt_down;
        gd.w_bstride = static_cast<int64_t>(n.w[2]->row_bytes()) * a.D;
        gd.y = y.f();
        gd.ldy = a.D;
        gd.N = a.D;
        gd.K = a.F;
        cuda::gemm(gd, stream_);
        cuda::moe_combine(a, y.f(), route, d_pair_row, out, stream_);
    }

    void shared_ffn(const Node& n, const float* x, float* out) {
        const int64_t T = n.rows, F = n.w[0]->ne[1];
        if (T <= 8 && n.w[0]->type == n.w[1]->type) {
            // Decode: gate, up and SwiGLU in one kernel, then down.
            Scratch act(*pool_, static_cast<size_t>(T * F) * 4);
            cuda::GemmArgs a;
            a.x = x;
            a.ldx = n.w[0]->ne[0];
            const cuda::Resident::Entry& gate = resident(*n.w[0]);
            a.w = gate.ptr;
            a.wt = gate.wt;
            a.y = act.f();
            a.ldy = F;
            a.M = T;
            a.N = F;
            a.K = n.w[0]->ne[0];
            std::optional<Scratch> sq;
            gemv_scratch(a, sq);
            cuda::gemv_swiglu(a, weight(*n.w[1]), stream_);
            matmul(*n.w[2], act.f(), T, out);
            return;
        }
        Scratch g(*pool_, static_cast<size_t>(T * F) * 4);
        Scratch u(*pool_, static_cast<size_t>(T * F) * 4);
        matmul(*n.w[0], x, T, g.f());
        matmul(*n.w[1], x, T, u.f());
        cuda::swiglu(g.f(), u.f(), T * F, g.f(), stream_);
        matmul(*n.w[2], g.f(), T, out);
    }

    std::string name_;
    int device_ = 0;
    int n_sm_ = 1;
    cudaStream_t stream_ = nullptr;
    cuda::DevError* err_ = nullptr;
    cuda::DevError* err_host_ = nullptr;  // pinned: synchronize() reads the error word here
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
    // DS3_CUDA_STEP_TIMES=1: the host's time around each replayed step, printed at exit.
    bool step_times_ = false;
    struct {
        int64_t n = 0;
        double before = 0, launch = 0, wait = 0, after = 0;
    } steps_;
    bool norm_q8_ = true;  // DS3_CUDA_NORM_Q8=0: the norms of a replayed step write no quantised copy
    bool streams_ = true;  // DS3_CUDA_STREAMS=0: a captured step on one stream
    bool pdl_batch_off_ = true;  // DS3_CUDA_PDL_BATCH=1: a batch's ops with dependent launch too
    cudaStream_t side_ = nullptr;  // the second stream of a captured step
    cuda::Branches branches_;
    // The quantised norm outputs of the step being recorded (record()).
    struct Quantised {
        const float* x;
        const void* q;
        int64_t rows, cols;
    };
    std::vector<Quantised> quantised_;
    bool stale_graphs_ = false;  // a weight was uploaded afresh: captured graphs may read the old copy
    std::vector<std::unique_ptr<GraphExec>> execs_;  // most recently used first
    std::vector<std::pair<cudaEvent_t, cudaEvent_t>> prof_events_;
    size_t prof_used_ = 0;
    std::vector<std::string> prof_pending_;
    std::map<std::string, ProfRow> prof_rows_;
};

}  // namespace

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& opts, std::string name) {
    return std::make_unique<CudaBackend>(opts, std::move(name));
}

}  // namespace ds3
