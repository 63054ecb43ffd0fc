// Decode steps of the CUDA backend captured into CUDA graphs and replayed (run_graph):
// the key that tells two steps apart, the arena and pinned slots of a captured step, the
// fused add + RMS norm launches, MLA's shorter decode chain (record_mla_early) and the
// recording of a step on one or two streams.
#include <cuda_runtime.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "backends/cuda/check.h"
#include "backends/cuda/cuda_backend_impl.h"
#include "backends/cuda/gemv_q8.h"
#include "backends/cuda/kernels.h"
#include "runtime/error.h"
#include "runtime/kv_cache.h"

namespace ds3::cuda {

// Decode steps (every node ≤ 8 rows) run from a CUDA graph: the first time a graph of
// this structure is seen it runs node by node (uploading weights, setting kernel
// attributes), the second time its launches are captured, and from then on each step
// is one cudaGraphLaunch plus the input copies. Activations live in an arena owned by
// the captured graph, and the kernels read positions and token ids from device memory,
// so a replay at a new position needs no new parameters. Prefill, profiling and
// DS3_CUDA_GRAPHS=0 take the scheduler's node-by-node path.
bool CudaBackend::run_graph(const Graph& g, std::span<const GraphInput> inputs, KvCache* cache,
                            std::span<const int> fetch, Fetched& results) {
    if (!graphs_ || prof_) return false;
    const GraphFacts& facts = facts_of(g);
    if (!facts.replayable || (!facts.mla.empty() && !cache)) return false;
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
    if (timed && !steps_.start) {
        DS3_CU(cudaEventCreate(&steps_.start));
        DS3_CU(cudaEventCreate(&steps_.end));
        DS3_CU(cudaEventCreate(&steps_.prev_end));
    }
    const auto t_launch = std::chrono::steady_clock::now();
    if (timed) DS3_CU(cudaEventRecord(steps_.start, stream_));
    if (e.exec) {
        DS3_CU(cudaGraphLaunch(e.exec, stream_));
    } else if (e.runs == 0 || e.eager_only) {
        copy_inputs(e);
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
        if (!e.mapped[static_cast<size_t>(id)])
            DS3_CU(cudaMemcpyAsync(e.output_slot(at), e.at(id), n.nbytes(), cudaMemcpyDeviceToHost, stream_));
        at += n.nbytes();
    }
    if (timed) DS3_CU(cudaEventRecord(steps_.end, stream_));
    const auto t_launched = std::chrono::steady_clock::now();
    synchronize();
    const auto t_synced = std::chrono::steady_clock::now();
    // Handed back in place (a copy of the logits out of pinned memory took 20-30 µs a
    // step): valid until the next step overwrites the slot or drops the exec, both only
    // inside a later run_graph.
    at = 0;
    for (int id : fetch) {
        const Node& n = g.node(id);
        results.viewed[id] = std::span<const float>(e.output_slot(at), static_cast<size_t>(n.n_elements()));
        at += n.nbytes();
    }
    if (timed) {
        const auto t_exit = std::chrono::steady_clock::now();
        auto us = [](auto a, auto b) { return std::chrono::duration<double, std::micro>(b - a).count(); };
        steps_.before += us(t_enter, t_launch);
        steps_.launch += us(t_launch, t_launched);
        steps_.wait += us(t_launched, t_synced);
        steps_.after += us(t_synced, t_exit);
        if (steps_.n > 0) steps_.outside.push_back(static_cast<float>(us(steps_.exit, t_enter)));
        steps_.exit = t_exit;
        float ms = 0;
        DS3_CU(cudaEventElapsedTime(&ms, steps_.start, steps_.end));
        steps_.device += 1000.0 * ms;
        if (steps_.n > 0) {  // the step before was timed too: its end is prev_end
            DS3_CU(cudaEventElapsedTime(&ms, steps_.prev_end, steps_.start));
            steps_.idle.push_back(1000.0f * ms);
        }
        std::swap(steps_.end, steps_.prev_end);
        ++steps_.n;
    }
    return true;
}

// What makes two graphs' nodes replay the same: every node's op, shape, inputs, weights
// and parameters except the position (which the kernels read from the device).
uint64_t graph_nodes_key(const Graph& g) {
    std::vector<uint64_t> v;
    v.reserve(static_cast<size_t>(g.size()) * 16);
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
    return XXH3_64bits(v.data(), v.size() * sizeof(uint64_t));
}

// What run_graph needs of a graph's nodes, kept for the graph's version: made once for a
// decode loop's graph, not each step (the key alone hashed ~6 µs a step on V3's 8-layer
// slice). DS3_CUDA_KEY_CACHE=0 makes it anew each step (for measurements).
const CudaBackend::GraphFacts& CudaBackend::facts_of(const Graph& g) {
    if (key_cache_ && g.version() == facts_.version) return facts_;
    facts_.version = g.version();
    facts_.nodes_key = graph_nodes_key(g);
    facts_.replayable = true;
    facts_.mla.clear();
    for (int i = 0; i < g.size(); ++i) {
        const Node& n = g.node(i);
        if (n.rows > 8) facts_.replayable = false;  // prefill: moe_ffn groups tokens on the host
        if (n.op != Op::mla_attn) continue;
        if (n.src.size() < 4) facts_.replayable = false;
        facts_.mla.push_back(i);
    }
    return facts_;
}

// The nodes' part (facts_of), then the cache buffers the MLA nodes read, and what is fetched.
uint64_t CudaBackend::graph_key(const Graph& g, KvCache* cache, std::span<const int> fetch) {
    const GraphFacts& facts = facts_of(g);
    std::vector<uint64_t> v = {facts.nodes_key};
    v.reserve(2 * facts.mla.size() + fetch.size() + 2);
    for (int i : facts.mla) {
        Buffer& c = cache->layer(g.node(i).layer, *this);
        v.push_back(reinterpret_cast<uintptr_t>(static_cast<CudaBuffer&>(c).dev()));
        v.push_back(c.size());
    }
    v.push_back(~uint64_t{0});
    for (int id : fetch) v.push_back(static_cast<uint64_t>(id));
    return XXH3_64bits(v.data(), v.size() * sizeof(uint64_t));
}

CudaBackend::GraphExec& CudaBackend::exec_for(const Graph& g, KvCache* cache, std::span<const int> fetch) {
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
    e->fetched.assign(static_cast<size_t>(g.size()), 0);
    for (int id : fetch) e->fetched[static_cast<size_t>(id)] = 1;
    // The inputs first, laid out as in their pinned slots (16-byte steps), so that one copy
    // brings them all; then every other node at 256-byte steps.
    e->offset.resize(static_cast<size_t>(g.size()));
    for (int i = 0; i < g.size(); ++i)
        if (g.node(i).op == Op::input) {
            e->inputs.emplace_back(i, total);
            e->offset[static_cast<size_t>(i)] = total;
            total += (g.node(i).nbytes() + 15) / 16 * 16;
        }
    e->in_bytes = total;
    total = (total + 255) / 256 * 256;
    for (int i = 0; i < g.size(); ++i) {
        if (g.node(i).op == Op::input) continue;
        e->offset[static_cast<size_t>(i)] = total;
        total += (std::max<uint64_t>(g.node(i).nbytes(), 4) + 255) / 256 * 256;
    }
    // Each RMS norm also writes its output quantised for the integer GEMVs that read it, and
    // so may a one-token MLA node for the projection after it (v_b's kernel; attn_yq_).
    e->q8.assign(static_cast<size_t>(g.size()), 0);
    for (int i = 0; i < g.size(); ++i) {
        const Node& n = g.node(i);
        const bool norm = n.op == Op::rms_norm && norm_q8_,
                   attn = n.op == Op::mla_attn && n.rows == 1 && act_q8_ && projected_next(g, i);
        if (!(norm || attn) || n.cols % 32 != 0) continue;
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
    size_t host_bytes = e->in_bytes;
    e->out_offset = host_bytes;
    for (int id : fetch) host_bytes += g.node(id).nbytes();
    DS3_CU(cudaMallocHost(reinterpret_cast<void**>(&e->host), std::max<size_t>(host_bytes, 16)));
    // A fetched node that no other node reads is written by its kernel straight into its
    // pinned slot (mapped: the device writes it over the bus as it goes), so that no copy
    // follows the step (the logits' 517 KB took ~11 µs after V3's output head).
    e->mapped.assign(static_cast<size_t>(g.size()), 0);
    if (mapped_out_) {
        std::vector<uint8_t> read(static_cast<size_t>(g.size()), 0);
        for (const Node& n : g.nodes())
            for (int src : n.src) read[static_cast<size_t>(src)] = 1;
        for (int id : fetch)
            if (g.node(id).op != Op::input && g.node(id).op != Op::view && !read[static_cast<size_t>(id)])
                e->mapped[static_cast<size_t>(id)] = 1;
    }
    e->alias.assign(static_cast<size_t>(g.size()), 0);
    size_t at = 0;
    std::vector<float*> slot_of(static_cast<size_t>(g.size()), nullptr);
    for (int id : fetch) {
        slot_of[static_cast<size_t>(id)] = e->output_slot(at);
        at += g.node(id).nbytes();
    }
    for (int i = 0; i < g.size(); ++i) {
        const Node& n = g.node(i);
        void* p = static_cast<uint8_t*>(arena) + e->offset[static_cast<size_t>(i)];
        // A column range of one row is contiguous in its source: the view is an alias
        // (no copy kernel), valid because no slot of the arena is written twice.
        if (n.op == Op::view && (n.rows == 1 || (n.col0 == 0 && n.cols == n.src_cols))) {
            p = e->at(n.src[0]) + n.col0;
            e->alias[static_cast<size_t>(i)] = 1;
        }
        if (e->mapped[static_cast<size_t>(i)]) p = slot_of[static_cast<size_t>(i)];
        e->views.push_back(std::make_unique<CudaBuffer>(p, n.nbytes()));
    }
    execs_.insert(execs_.begin(), std::move(e));
    return *execs_.front();
}

// The inputs from their pinned slots to the arena (captured: the step's first nodes).
void CudaBackend::copy_inputs(const GraphExec& e) {
    if (e.in_bytes) DS3_CU(cudaMemcpyAsync(e.arena, e.host, e.in_bytes, cudaMemcpyHostToDevice, stream_));
}

// The residual adds of a layer and the RMS norm after them as one kernel: add → rms_norm
// (attention residual, then ffn_norm), or add → add → rms_norm (shared + routed experts,
// residual, next layer's attn_norm). Returns the nodes it would cover (0: no match).
int CudaBackend::match_add_norm(const Graph& g, int i) {
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

void CudaBackend::launch_add_norm(const Graph& g, GraphExec& e, int i, int covered) {
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

bool CudaBackend::projected_next(const Graph& g, int i) {
    return i + 1 < g.size() && g.node(i + 1).op == Op::mul_mat && g.node(i + 1).src[0] == i;
}

// The slot of norm node j's quantised output (null: none), registered so that the
// products reading that output use it (gemv_scratch).
void* CudaBackend::quantised_copy(GraphExec& e, int j, const Node& norm) {
    const size_t off = e.q8[static_cast<size_t>(j)];
    if (!off) return nullptr;
    void* q = static_cast<uint8_t*>(e.arena) + off;
    quantised_.push_back({e.at(j), q, norm.rows, norm.cols});
    return q;
}

// Enqueues every node of g on the stream (eagerly, or into a capture). Captured steps
// put independent branches on a second stream (branches.h) unless DS3_CUDA_STREAMS=0.
void CudaBackend::record(const Graph& g, GraphExec& e, KvCache* cache, bool capturing) {
    std::vector<Buffer*> in;
    std::vector<int> srcs;
    quantised_.clear();
    mla_ahead_.reset();  // a record that threw may have left one behind
    const bool two = capturing && streams_;
    if (two) branches_.begin(stream_, side_, g.size());
    // The node whose launch makes j's data (a view that aliases its source is no
    // launch); -1 for graph inputs, which are copied before the step starts.
    auto producer = [&](int j) {
        while (e.alias[static_cast<size_t>(j)]) j = g.node(j).src[0];
        return g.node(j).op == Op::input ? -1 : j;
    };
    // Launches nodes [first, last] as one unit, on the stream Branches picks (after the
    // producers of their inputs and of `also`).
    auto unit = [&](int first, int last, auto&& launch, int also = -1) {
        if (!two) return launch();
        srcs.clear();
        for (int k = first; k <= last; ++k)
            for (int src : g.node(k).src)
                if (const int p = producer(src); p >= 0 && (p < first || p > last)) srcs.push_back(p);
        if (also >= 0 && producer(also) >= 0) srcs.push_back(producer(also));
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
        if (const int last = record_mla_early(g, e, cache, i, unit); last >= 0) {
            i = last;
            continue;
        }
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
        const bool out_next = n.op == Op::mla_attn && projected_next(g, i);
        attn_out_ = out_next ? g.node(i + 1).w[0] : nullptr;
        const size_t yq_at = out_next ? e.q8[static_cast<size_t>(i)] : 0;
        attn_yq_ = yq_at ? static_cast<uint8_t*>(e.arena) + yq_at : nullptr;
        if (n.op == Op::mla_attn && mla_ahead_.node == i) {
            unit(i, i, [&] {
                if (!mla_ahead_.stored) mla_store(n, e.at(n.src[1]), e.at(n.src[2]), i32(in[3]), *state);
                if (mla_ahead_.q_raw)
                    mla_attend(n, mla_ahead_.q_raw, mla_ahead_.q_abs->f(), i32(in[3]), *state, e.at(i),
                               mla_ahead_.cs->f());
                else
                    mla_attend(n, e.at(n.src[0]), mla_ahead_.q_abs->f(), i32(in[3]), *state, e.at(i));
                launched(n.name);
            });
            mla_ahead_.reset();
        } else {
            // An MoE layer's shared experts wait for its routing when they are wide
            // (shared_ffn_wide; DS3_CUDA_SHEXP_WAIT=0|1: never, always), else start beside
            // its router.
            const bool wait = shexp_wait_ < 0 ? shared_ffn_wide(g, i) : shexp_wait_ == 1;
            unit(i, i, [&] { compute_op(n, in, *e.views[static_cast<size_t>(i)], state); },
                 wait ? shared_after_route(g, i) : -1);
        }
        attn_out_ = nullptr;
        attn_yq_ = nullptr;
    }
    if (two) branches_.join();
    quantised_.clear();
    mla_ahead_.reset();
}

int shared_after_route(const Graph& g, int i) {
    const Node& n = g.node(i);
    if (n.op != Op::shared_ffn) return -1;
    for (int j = i - 1; j >= 0 && j >= i - 4; --j)
        if (g.node(j).op == Op::moe_route && g.node(j).src[0] == n.src[0]) return j;
    return -1;
}

bool shared_ffn_wide(const Graph& g, int i) {
    const Node& n = g.node(i);
    if (n.op != Op::shared_ffn) return false;
    for (int j = std::max(0, i - 4); j < std::min(g.size(), i + 5); ++j) {
        const Node& m = g.node(j);
        if (m.op == Op::moe_ffn && m.src[0] == n.src[0]) return 4 * n.w[0]->ne[1] > m.route.n_used * m.w[0]->ne[1];
    }
    return false;
}

int mla_early_node(const Graph& g, int i) {
    const Node& r = g.node(i);
    if (r.op != Op::rope_yarn || r.rows != 1 || !r.rope) return -1;
    int mi = -1;
    for (int j = i + 1; j < g.size() && mi < 0; ++j)
        for (size_t k = 0; k < g.node(j).src.size(); ++k)
            if (g.node(j).src[k] == i) {
                if (g.node(j).op != Op::mla_attn || k != 0) return -1;  // read by another node first
                mi = j;
            }
    if (mi < 0) return -1;
    const Node& m = g.node(mi);
    const AttnParams& p = m.attn;
    const bool query = r.n_head == p.n_head && r.rope_offset == p.qk_nope && r.rope_dim == p.qk_rope &&
                       r.head_dim == p.qk_nope + p.qk_rope;
    return m.src.size() >= 4 && query ? mi : -1;
}

MlaLatent mla_latent_nodes(const Graph& g, int m) {
    const Node& a = g.node(m);
    if (a.op != Op::mla_attn || a.src.size() < 4) return {};
    const int lat = a.src[1], kpe = a.src[2];
    const Node& norm = g.node(lat);
    const Node& rope = g.node(kpe);
    if (norm.op != Op::rms_norm || rope.op != Op::rope_yarn || !rope.rope || lat >= kpe || norm.rows != 1 ||
        rope.rows != 1 || rope.src[1] != a.src[3])
        return {};
    // Both read views of one row (the kv_a product): its first kv_lora values, then the rope part.
    const Node& vn = g.node(norm.src[0]);
    const Node& vr = g.node(rope.src[0]);
    if (vn.op != Op::view || vr.op != Op::view || vn.src[0] != vr.src[0] || vn.col0 != 0 ||
        vn.cols != a.attn.kv_lora || vr.col0 != a.attn.kv_lora || vr.cols != a.attn.qk_rope ||
        vn.src_cols != a.attn.kv_lora + a.attn.qk_rope)
        return {};
    if (rope.n_head != 1 || rope.rope_offset != 0 || rope.rope_dim != a.attn.qk_rope || rope.head_dim != rope.rope_dim)
        return {};
    // Between them only views, and nothing but the MLA node reads either.
    for (int j = lat + 1; j < kpe; ++j)
        if (g.node(j).op != Op::view) return {};
    for (int j = lat + 1; j < g.size(); ++j)
        for (int src : g.node(j).src)
            if ((src == lat || src == kpe) && j != m) return {};
    return {lat, kpe};
}

// MLA at decode, in a shorter chain than its node's (one query, the positions an input):
// - at the query's RoPE (rope node i, read only by the MLA node), k_b follows the q
//   projection at once on its stream, so that it no longer waits for the latent side. Its
//   blocks quantise q_nope themselves, and the RoPE launches nothing: the split rotates
//   q_pe with the latent kernel's angles (the same table and position). Where that does not
//   apply (the roped query read back, no latent kernel), the RoPE runs and also quantises
//   q_nope for k_b (rope_rows_q8);
// - the latent side (the latent norm and the key's RoPE) is one launch that also stores
//   the cache row (mla_latent), or where it does not apply the store follows the key's
//   RoPE on that one's stream;
// - the MLA node then runs the attention alone.
// The same arithmetic on the same values: a replay equals a node-by-node run bit for bit.
// DS3_CUDA_MLA_EARLY=0 turns it off (mla_early_). Returns the last node it launched
// (-1: none; the caller then records node i).
template <typename Unit>
int CudaBackend::record_mla_early(const Graph& g, GraphExec& e, KvCache* cache, int i, Unit& unit) {
    const Node& r = g.node(i);
    auto pos_of = [&](const Node& n) { return i32(e.views[static_cast<size_t>(n.src.back())].get()); };
    if (mla_ahead_.node >= 0) {  // the latent side of the MLA node ahead
        const Node& m = g.node(mla_ahead_.node);
        Buffer& c = cache->layer(m.layer, *this);
        const MlaLatent lt = mla_ahead_.latent;
        if (i == lt.lat && latent_fused_) {
            const Node& norm = g.node(lt.lat);
            const Node& rope = g.node(lt.kpe);
            const cuda::RopeArgs a = rope_args(rope);
            if (!cuda::mla_latent_applies(m.attn.kv_lora, a)) return -1;
            unit(lt.lat, lt.kpe, [&] {
                cuda::mla_latent(e.at(norm.src[0]), m.attn.kv_lora, weight(*norm.w[0]), wtype(norm.w[0]->type),
                                 norm.eps, a, pos_of(m), e.at(lt.lat), e.at(lt.kpe), f32(&c), mla_context(m, c), err_,
                                 stream_, mla_ahead_.cs ? mla_ahead_.cs->f() : nullptr);
                launched(m.name + " latent");
            });
            mla_ahead_.stored = true;
            return lt.kpe;
        }
        if (m.src[2] != i || r.op != Op::rope_yarn || m.src[1] >= i) return -1;
        unit(
            i, i,
            [&] {
                rope(r, e.at(r.src[0]), pos_of(r), e.at(i));
                launched(r.name);
                mla_store(m, e.at(m.src[1]), e.at(i), pos_of(m), c);
                launched(m.name + " store");
            },
            m.src[1]);
        mla_ahead_.stored = true;
        return i;
    }
    const int mi = mla_early_ && cache && r.op == Op::rope_yarn ? mla_early_node(g, i) : -1;
    if (mi < 0) return -1;
    const Node& m = g.node(mi);
    const AttnParams& p = m.attn;
    cuda::RopeArgs a = rope_args(r);
    const cuda::Resident::Entry& kb = resident(*m.w[0]);
    const bool q8_kb = cuda::gemv_scratch_bytes(kb.wt, 1, p.qk_nope, p.n_head) > 0;
    const bool fused = cuda::rope_q8_applies(a) && q8_kb;
    mla_ahead_.reset();
    mla_ahead_.node = mi;
    mla_ahead_.q_abs.emplace(*pool_, static_cast<size_t>(p.n_head) * p.kv_lora * 4);
    mla_ahead_.latent = mla_latent_nodes(g, mi);
    // The query left unrotated where the latent kernel, recorded after it, can hand its
    // angles to the split: the same table and width as the key's RoPE, and the roped query
    // not read back.
    const MlaLatent& lt = mla_ahead_.latent;
    if (q_unroped_ && latent_fused_ && q8_kb && lt.lat > i && p.qk_nope <= cuda::kInlineRowK &&
        !e.fetched[static_cast<size_t>(i)] && g.node(lt.kpe).rope == r.rope && g.node(lt.kpe).rope_dim == r.rope_dim &&
        r.rope_dim % 4 == 0 && cuda::mla_latent_applies(p.kv_lora, rope_args(g.node(lt.kpe)))) {
        mla_ahead_.q_raw = e.at(r.src[0]);
        mla_ahead_.cs.emplace(*pool_, static_cast<size_t>(r.rope_dim) * 4);
        unit(i, i, [&] {
            mla_absorb(m, mla_ahead_.q_raw, mla_ahead_.q_abs->f(), nullptr, true);
            launched(m.name + " k_b");
        });
        return i;
    }
    if (fused) mla_ahead_.q8.emplace(*pool_, cuda::q8_rows_bytes(p.n_head, p.qk_nope));
    unit(i, i, [&] {
        if (fused) cuda::rope_rows_q8(a, pos_of(r), e.at(r.src[0]), e.at(i), mla_ahead_.q8->f(), stream_);
        else cuda::rope_rows(a, pos_of(r), e.at(r.src[0]), e.at(i), stream_);
        launched(r.name);
        mla_absorb(m, e.at(i), mla_ahead_.q_abs->f(), fused ? mla_ahead_.q8->f() : nullptr);
        launched(m.name + " k_b");
    });
    return i;
}

void CudaBackend::capture(const Graph& g, GraphExec& e, KvCache* cache) {
    // Relaxed: the pool may cudaMalloc a scratch block it has not made yet.
    DS3_CU(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    pool_->hold(&e.held);
    cudaGraph_t graph = nullptr;
    try {
        copy_inputs(e);
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
        copy_inputs(e);
        record(g, e, cache);
    }
}

}  // namespace ds3::cuda
