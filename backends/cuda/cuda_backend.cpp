// The CUDA backend: the device, buffers from a caching pool, resident weights, and the
// dispatch of every op to the launchers of kernels.h (the class: cuda_backend_impl.h;
// replayed decode steps: cuda_step.cpp). Host code only; kernels live in the .cu files.
#include "backends/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>

#include "backends/cuda/check.h"
#include "backends/cuda/cuda_backend_impl.h"
#include "backends/cuda/gemv_q8.h"
#include "backends/cuda/kernels.h"
#include "runtime/error.h"
#include "runtime/kv_cache.h"

namespace ds3::cuda {

namespace {

bool plain_float(TypeId t) { return t == TypeId::F32 || t == TypeId::BF16 || t == TypeId::F16; }

// A matrix the GEMV/GEMM/get_rows kernels can read: a known type and whole blocks per row.
bool matrix_ok(const Weight& w) {
    auto t = wtype_of(w.type);
    return t && w.ne[0] % cuda::wtype_block(*t) == 0;
}

}  // namespace

CudaBackend::CudaBackend(const BackendOptions&, std::string name) : name_(std::move(name)) {
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
    if (const char* p = std::getenv("DS3_CUDA_MAPPED_ERR")) err_mapped_ = std::atoi(p) != 0;
    // The error word in mapped pinned memory: a kernel that records an error writes it over
    // the bus (atomically as the device sees it), and a step's wait is all it takes to read
    // it, with no copy after the step's last kernel (4-5 µs of every decode step).
    DS3_CU(cudaHostAlloc(&err_host_, sizeof(cuda::DevError), err_mapped_ ? cudaHostAllocMapped : 0));
    *err_host_ = {};
    if (err_mapped_) {
        DS3_CU(cudaHostGetDevicePointer(reinterpret_cast<void**>(&err_), err_host_, 0));
    } else {
        DS3_CU(cudaMalloc(&err_, sizeof(cuda::DevError)));
        DS3_CU(cudaMemsetAsync(err_, 0, sizeof(cuda::DevError), stream_));
        DS3_CU(cudaStreamSynchronize(stream_));
    }
    pool_ = std::make_shared<Pool>();
    weights_ = std::make_unique<cuda::Resident>(*pool_, stream_);
    if (const char* p = std::getenv("DS3_CUDA_PROFILE")) {
        prof_level_ = std::atoi(p);
        prof_ = prof_level_ != 0;
    }
    if (const char* p = std::getenv("DS3_CUDA_GRAPHS")) graphs_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_MAPPED_OUT")) mapped_out_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_STEP_TIMES")) step_times_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_NORM_Q8")) norm_q8_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_STREAMS")) streams_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_MLA_EARLY")) mla_early_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_MLA_LATENT")) latent_fused_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_SHEXP_WAIT")) shexp_wait_ = std::atoi(p) != 0 ? 1 : 0;
    if (const char* p = std::getenv("DS3_CUDA_MLA_ROTATE")) q_unroped_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_PDL_BATCH")) pdl_batch_off_ = std::atoi(p) == 0;
    if (const char* p = std::getenv("DS3_CUDA_ACT_Q8")) act_q8_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_MOE_SUM")) moe_sum_ = std::atoi(p) != 0;
    if (const char* p = std::getenv("DS3_CUDA_KEY_CACHE")) key_cache_ = std::atoi(p) != 0;
}

namespace {
float median(std::vector<float> v) {
    if (v.empty()) return 0.0f;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
}
}  // namespace

CudaBackend::~CudaBackend() {
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
                     "wait %.1f, after %.1f, outside (from the step before) %.1f (median); device µs per "
                     "step: the step and its copies %.1f, idle before it %.1f (median)\n",
                     static_cast<long long>(steps_.n), steps_.before / n, steps_.launch / n, steps_.wait / n,
                     steps_.after / n, median(steps_.outside), steps_.device / n, median(steps_.idle));
    }
    for (cudaEvent_t ev : {steps_.start, steps_.end, steps_.prev_end})
        if (ev) cudaEventDestroy(ev);
    weights_.reset();
    if (!err_mapped_) cudaFree(err_);
    cudaFreeHost(err_host_);
    cudaStreamDestroy(side_);
    cudaStreamDestroy(stream_);
}

bool CudaBackend::supports(const Node& n) const {
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

void CudaBackend::upload(Buffer& dst, size_t offset, const void* src, size_t n) {
    check(offset + n <= dst.size(), "cuda", "upload past the end of a buffer");
    DS3_CU(cudaMemcpyAsync(static_cast<uint8_t*>(static_cast<CudaBuffer&>(dst).dev()) + offset, src, n,
                           cudaMemcpyHostToDevice, stream_));
}

void CudaBackend::download(const Buffer& src, size_t offset, void* dst, size_t n) {
    check(offset + n <= src.size(), "cuda", "download past the end of a buffer");
    DS3_CU(cudaMemcpyAsync(dst, static_cast<const uint8_t*>(static_cast<const CudaBuffer&>(src).dev()) + offset,
                           n, cudaMemcpyDeviceToHost, stream_));
    synchronize();
}

// One wait: the error word is read after it (mapped; or copied back in it through pinned
// memory: a second copy and wait after the step cost ~10 µs of every decode step).
void CudaBackend::synchronize() {
    if (!err_mapped_) DS3_CU(cudaMemcpyAsync(err_host_, err_, sizeof *err_host_, cudaMemcpyDeviceToHost, stream_));
    DS3_CU(cudaStreamSynchronize(stream_));
    if (prof_) prof_collect();
    const cuda::DevError e = *err_host_;
    if (e.code == 0) return;
    if (err_mapped_) {
        *err_host_ = {};  // the stream is drained: no kernel writes it now
    } else {
        DS3_CU(cudaMemsetAsync(err_, 0, sizeof e, stream_));
        DS3_CU(cudaStreamSynchronize(stream_));
    }
    if (e.code == 1)
        throw Error("cuda", "token id " + std::to_string(e.value) + " outside [0, " + std::to_string(e.limit) + ")");
    if (e.code == 3)
        throw Error("kv_cache", "position " + std::to_string(e.value) + " outside the context of " +
                                    std::to_string(e.limit) + " tokens");
    throw Error("cuda", "expert id " + std::to_string(e.value) + " out of range [0, " + std::to_string(e.limit) + ")");
}

void CudaBackend::compute(const Node& n, std::span<Buffer* const> in, Buffer& out_buf, Buffer* state) {
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

void CudaBackend::use_device() {
    // cudaSetDevice costs a driver call: only when this thread is on another device.
    thread_local int current = -1;
    if (current != device_) {
        DS3_CU(cudaSetDevice(device_));
        current = device_;
    }
}

void CudaBackend::compute_op(const Node& n, std::span<Buffer* const> in, Buffer& out_buf, Buffer* state) {
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

const cuda::Resident::Entry& CudaBackend::resident(const Weight& w) {
    bool replaced = false;
    const cuda::Resident::Entry& e = weights_->get(w, replaced);
    if (replaced) stale_graphs_ = true;
    return e;
}

// yq: also y quantised there for the integer GEMVs (add_rms_norm).
void CudaBackend::rms_norm(const Node& n, const float* x, float* y, void* yq) {
    cuda::add_rms_norm(x, nullptr, nullptr, nullptr, nullptr, weight(*n.w[0]), wtype(n.w[0]->type), n.eps, n.rows,
                       n.cols, y, stream_, yq);
}

void CudaBackend::matmul(const Weight& w, const float* x, int64_t rows, float* y, const void* xq) {
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
    if (xq) a.xq = xq;
    else gemv_scratch(a, sq);
    cuda::gemm(a, stream_);
}

// The integer GEMV's scratch for `a` (its activation rows quantised), held in `slot`
// until the product is enqueued; none where the f32 kernels run (gemv_scratch_bytes 0).
// Where a norm of the step being recorded already quantised exactly these rows, the
// product reads that copy and needs no scratch.
void CudaBackend::gemv_scratch(cuda::GemmArgs& a, std::optional<Scratch>& slot) {
    if (const size_t n = cuda::gemv_scratch_bytes(a.wt, a.M, a.K, a.batch)) {
        a.xq = a.batch == 1 && a.ldx == a.K ? quantised(a.x, a.M, a.K) : nullptr;
        if (!a.xq) a.scratch = slot.emplace(*pool_, n).f();
    }
}

const void* CudaBackend::quantised(const float* x, int64_t rows, int64_t cols) const {
    for (const Quantised& q : quantised_)
        if (q.x == x && q.rows == rows && q.cols == cols) return q.q;
    return nullptr;
}

void CudaBackend::rope(const Node& n, const float* x, const int32_t* pos, float* y) {
    cuda::rope_rows(rope_args(n), pos, x, y, stream_);
}

cuda::RopeArgs CudaBackend::rope_args(const Node& n) {
    cuda::RopeArgs a;
    a.rows = n.rows;
    a.cols = n.cols;
    a.n_head = n.n_head;
    a.head_dim = n.head_dim;
    a.rope_offset = n.rope_offset;
    a.rope_dim = n.rope_dim;
    a.attn_factor = n.rope->attn_factor;
    std::copy_n(n.rope->inv_freq.begin(), n.rope_dim / 2, a.inv_freq);
    return a;
}

// The context of n's cache, checked against the batch's positions.
int64_t CudaBackend::mla_context(const Node& n, const Buffer& cache_buf) {
    const AttnParams& p = n.attn;
    const int64_t T = n.rows, width = p.kv_lora + p.qk_rope;
    const int64_t n_ctx = static_cast<int64_t>(cache_buf.size() / 4) / width;
    if (p.pos0 < 0 || p.pos0 + T > n_ctx)
        throw Error("kv_cache", n.name + ": positions " + std::to_string(p.pos0) + ".." +
                                    std::to_string(p.pos0 + T - 1) + " exceed the context of " +
                                    std::to_string(n_ctx) + " tokens");
    return n_ctx;
}

void CudaBackend::mla_attn(const Node& n, const float* q, const float* latent, const float* k_pe,
                           const int32_t* positions, Buffer& cache_buf, float* out) {
    const AttnParams& p = n.attn;
    const int64_t T = n.rows;
    mla_context(n, cache_buf);
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
    mla_store(n, latent, k_pe, positions, cache_buf);
    sub_mark("mla.store");
    Scratch q_abs(*pool_, static_cast<size_t>(T * p.n_head * p.kv_lora) * 4);
    mla_absorb(n, q, q_abs.f(), nullptr);
    sub_mark("mla.k_b");
    mla_attend(n, q, q_abs.f(), positions, cache_buf, out);
}

void CudaBackend::mla_store(const Node& n, const float* latent, const float* k_pe, const int32_t* positions,
                            Buffer& cache_buf) {
    const AttnParams& p = n.attn;
    const int64_t width = p.kv_lora + p.qk_rope;
    cuda::mla_store(f32(&cache_buf), width, mla_context(n, cache_buf), latent, k_pe, p.kv_lora, p.qk_rope, positions,
                    n.rows, err_, stream_);
}

// q_abs[t][h] = W_kb[h]ᵀ q_nope[t][h]: a GEMM per head, on the integer GEMV at decode (each
// head's q_nope row quantised: by a launch of its own; already, at q8 (rope_rows_q8's
// layout); or with quantise_rows, by the GEMV's blocks themselves).
void CudaBackend::mla_absorb(const Node& n, const float* q, float* q_abs, const void* q8, bool quantise_rows) {
    const AttnParams& p = n.attn;
    const int64_t H = p.n_head, qdim = p.qk_nope + p.qk_rope;
    const Weight& k_b = *n.w[0];  // [qk_nope, kv_lora, H]
    cuda::GemmArgs a;
    a.x = q;
    a.ldx = H * qdim;
    a.x_bstride = qdim;
    const cuda::Resident::Entry& kb = resident(k_b);
    a.w = kb.ptr;
    a.wt = kb.wt;
    a.w_bstride = static_cast<int64_t>(k_b.row_bytes()) * p.kv_lora;
    a.y = q_abs;
    a.ldy = H * p.kv_lora;
    a.y_bstride = p.kv_lora;
    a.M = n.rows;
    a.N = p.kv_lora;
    a.K = p.qk_nope;
    a.batch = static_cast<int>(H);
    std::optional<Scratch> sa;
    a.quantise_rows = quantise_rows;
    if (q8) a.xq = q8;
    else if (!quantise_rows) gemv_scratch(a, sa);
    cuda::gemm(a, stream_);
}

// The attention over the cache (which holds this batch's rows by now) and v_b: q is the
// roped query (q_pe read in place; with pe_cs, one query, not yet rotated: the split
// kernel rotates it by those (cos, sin) pairs), q_abs mla_absorb's.
void CudaBackend::mla_attend(const Node& n, const float* q, const float* q_abs, const int32_t* positions,
                             Buffer& cache_buf, float* out, const float* pe_cs) {
    const AttnParams& p = n.attn;
    const int64_t T = n.rows, H = p.n_head, width = p.kv_lora + p.qk_rope, qdim = p.qk_nope + p.qk_rope;
    const int64_t n_ctx = mla_context(n, cache_buf);
    float* cache = f32(&cache_buf);
    const Weight& v_b = *n.w[1];  // [kv_lora, v_head, H]
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
    // Decode: while the attention's latency-bound kernels run, L2 is asked for v_b (by the
    // split kernel) and for the head of each row of the output projection after this node
    // (by the merge; record() names it), up to 24 MiB of it — unless that projection is
    // interleaved (read by a one-wave kernel at ~4 TB/s: asking ahead made a V3-slice step
    // ~10 µs slower, slice 24). DS3_CUDA_L2_AHEAD_MB=N: N MiB for every layout (0: neither
    // weight); read once.
    static const int64_t ahead_env = [] {
        const char* e = std::getenv("DS3_CUDA_L2_AHEAD_MB");
        return e ? std::max<int64_t>(0, std::atoll(e)) << 20 : int64_t{-1};
    }();
    const cuda::Resident::Entry* wo = T <= 8 && attn_out_ && attn_out_->ne[1] > 0 ? &resident(*attn_out_) : nullptr;
    const int64_t ahead_bytes =
        ahead_env >= 0 ? ahead_env : wo && cuda::wtype_interleaved(wo->wt) ? 0 : int64_t{24} << 20;
    cuda::L2Ahead split_ahead, merge_ahead;
    if (T <= 8 && ahead_bytes > 0) {
        split_ahead = {vb.ptr, 1, static_cast<int64_t>(vb.nbytes), static_cast<int64_t>(vb.nbytes)};
        if (wo) {
            // (Interleaved types: a group of 32 rows stands for a row, its blocks one after another.)
            const int64_t rows = attn_out_->ne[1] / (cuda::wtype_interleaved(wo->wt) ? 32 : 1),
                          row_bytes = static_cast<int64_t>(wo->nbytes) / rows;
            merge_ahead = {wo->ptr, rows, row_bytes, std::min(row_bytes, ahead_bytes / rows / 128 * 128)};
        }
    }
    cuda::mla_attend(plan, q_abs, q + p.qk_nope, qdim, cache, width, n_ctx, p.kv_lora, static_cast<int>(H), T,
                     positions, p.scale, ctx.f(), part.f(), stream_, vq ? vq->f() : nullptr, split_ahead, merge_ahead,
                     pe_cs);
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
    std::optional<Scratch> sb;
    if (vq) b.xq = vq->f();
    else gemv_scratch(b, sb);
    // One token: the output also quantised where record() gave a slot, for the projection
    // after this node (no quantise launch before it).
    b.yq = T == 1 ? attn_yq_ : nullptr;
    if (cuda::gemm(b, stream_) && b.yq) quantised_.push_back({out, b.yq, 1, H * p.v_head});
    sub_mark("mla.v_b");
}

void CudaBackend::moe_route(const Node& n, const float* x, float* out) {
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

cuda::MoeArgs CudaBackend::moe_args(const Node& n) {
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
void CudaBackend::moe_ffn(const Node& n, const float* x, const float* route, float* out) {
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
        ad.quantise_act = act_q8_;
        ad.act_q8 = cuda::moe_pairs_gate_up(ad, x, route, act.f(), err_, stream_);
        sub_mark("moe.gate_up");
        if (moe_sum_ && cuda::moe_pairs_down_sum(ad, act.f(), route, out, stream_)) {
            sub_mark("moe.down_sum");
            return;
        }
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

void CudaBackend::shared_ffn(const Node& n, const float* x, float* out) {
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
        std::optional<Scratch> sq, aq;
        gemv_scratch(a, sq);
        // The down's input quantised by the gate/up kernel where it can (no launch of its own).
        const size_t aq_bytes = act_q8_ ? cuda::gemv_scratch_bytes(resident(*n.w[2]).wt, T, F) : 0;
        if (aq_bytes) a.yq = aq.emplace(*pool_, aq_bytes).f();
        const bool quantised = cuda::gemv_swiglu(a, weight(*n.w[1]), stream_);
        matmul(*n.w[2], act.f(), T, out, quantised ? a.yq : nullptr);
        return;
    }
    Scratch g(*pool_, static_cast<size_t>(T * F) * 4);
    Scratch u(*pool_, static_cast<size_t>(T * F) * 4);
    matmul(*n.w[0], x, T, g.f());
    matmul(*n.w[1], x, T, u.f());
    cuda::swiglu(g.f(), u.f(), T * F, g.f(), stream_);
    matmul(*n.w[2], g.f(), T, out);
}

}  // namespace ds3::cuda

namespace ds3 {

int cuda_device_count() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& opts, std::string name) {
    return std::make_unique<cuda::CudaBackend>(opts, std::move(name));
}

}  // namespace ds3
