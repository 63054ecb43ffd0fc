// The CUDA kernels of the fused ops, behind plain C++ launch functions so that the
// backend itself (cuda_backend.cpp) is ordinary C++. Every launcher enqueues on `s` and
// returns at once; errors inside kernels (a token or expert id out of range) are
// recorded in a DevError in device memory that the backend checks when it synchronises.
//
// Activations are f32; weights are F32/BF16/F16 or one of the quantized block formats
// (WType, decoded in registers by quant.cuh). A weight matrix is row-major with K
// contiguous values per output row (ggml's ne[0] = K; for block formats a whole number
// of blocks), stacks of them (experts, heads) `w_bstride` bytes apart.
#pragma once

#include <cstdint>

typedef struct CUstream_st* cudaStream_t;

namespace ds3::cuda {

// The *_g and *_i types are block formats regrouped on upload for the kernels (quant.cuh):
// q4_K_g and q5_K_g permute the levels inside each block, q6_K_g regroups pairs of blocks
// (rows of an even number of blocks), the *_i types interleave 32 rows block by block
// (matrices of a multiple of 32 rows; a row is then named by its group's start plus its
// index in the group, quant.cuh's Q6_KI::row). Same bytes per block and per matrix as the
// plain types.
enum class WType : uint8_t {
    f32, bf16, f16, q8_0, q4_0, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_xs, fp8_b128, q4_K_g, q5_K_g, q6_K_g, q6_K_i,
    q4_K_i, q5_K_i
};
inline bool wtype_interleaved(WType t) { return t == WType::q4_K_i || t == WType::q5_K_i || t == WType::q6_K_i; }
// Elements 16c..16c+15 of one block of a block format, decoded on the host by the same
// code the kernels run (quant.cuh is host and device): lets tests hold the decoders to
// the CPU references on machines without a GPU. Plain types: not block formats, false.
bool decode_chunk_host(WType t, const void* block, int c, float out[16]);
// One row of K values of any block format (q6_K_g included) decoded on the host by the
// kernels' row loader; false for the plain types. An interleaved (*_i) row is its group's
// start (32-byte aligned) plus its index in the group.
bool decode_row_host(WType t, const void* row, int64_t K, float* out);
// Q6_K rows of K values can be regrouped for q6_K_g: K a multiple of 512 (an even number
// of blocks per row, so pairs never straddle rows and rows stay 4-byte aligned).
inline bool q6k_groupable(int64_t K) { return K > 0 && K % 512 == 0; }
// The layout the upload gives `stack` matrices (experts) of type t with N rows of K values
// each: q4_K, q5_K and q6_K → q4_K_i, q5_K_i, q6_K_i for matrices of a multiple of 32 rows
// and at least interleave_rows(t) of them, a stack's counted eight times (their
// single-token GEMV has a warp a group of 32 rows: enough of them to fill the GPU); else
// q4_K_g, q5_K_g, and q6_K_g where q6k_groupable; other types stay as they are.
WType gpu_layout(WType t, int64_t K, int64_t N = 0, int64_t stack = 1);
// The fewest rows a matrix of plain type t (q4_K, q5_K, q6_K) needs for its interleaved
// layout: DS3_CUDA_Q6I_ROWS for q6_K, DS3_CUDA_Q45I_ROWS for q4_K and q5_K (read at every
// call, so that tests can lower them; 0: never), default 4096.
int64_t interleave_rows(WType t);
// Bytes of one unit of regrouped type g (a block; a pair of blocks for q6_K_g; 32 rows of
// K values for the *_i types): a matrix of its plain type is a whole number of them. 0 when g is
// not a regrouped type (or K does not suit it).
int64_t regroup_unit(WType g, int64_t K = 0);
// `units` units of g's plain type from src to g's layout in dst (not overlapping), on the
// host, or on the device (src and dst device memory, enqueued on s); K: the row length.
void regroup_host(WType g, const void* src, void* dst, int64_t units, int64_t K = 0);
void regroup(WType g, const void* src, void* dst, int64_t units, cudaStream_t s, int64_t K = 0);
// Σ w·x over one weight row of K values on the host, by the decode GEMV's integer path
// (x quantised to 8-bit blocks of 32, dp4a emulated): the same block code the kernels
// run, with the lane split of a row read among `rw` = 1, 2 or 4 rows per lane group (*_i:
// a row as decode_row_host takes it, read block by block as one warp of its kernel does).
// False for the types the integer path does not cover.
bool dot_q8_host(WType t, const void* row, int64_t K, const float* x, float* out, int rw = 1);

// Elements per block and bytes per block (1 and the element size for the plain types).
int wtype_block(WType t);
int wtype_block_bytes(WType t);
inline bool wtype_quantized(WType t) { return t != WType::f32 && t != WType::bf16 && t != WType::f16; }

// The first in-kernel failure of a launch sequence (code 0: none).
struct DevError {
    int code = 0;   // 1: token id out of range, 2: expert id out of range, 3: position outside the context
    int value = 0;  // the offending id
    int limit = 0;  // the exclusive upper bound it broke
};

// Y[b][m][n] = Σ_k X[b][m][k] · W[b][n][k] for b < batch, m < M, n < N.
// Grouped mode (MoE prefill, `groups` non-null): batch = number of groups; group g uses
// matrix groups[3g] of the stack and packed rows groups[3g+1] .. +groups[3g+2] of Y;
// X row of packed row p is x_rows[p] (or p when x_rows is null); M bounds the rows of
// any group. M ≤ 8 without groups runs the GEMV kernel (each weight byte read once for
// all rows); otherwise a tiled kernel.
struct GemmArgs {
    const float* x = nullptr;
    int64_t ldx = 0, x_bstride = 0;  // in floats
    const void* w = nullptr;
    WType wt = WType::f32;
    int64_t w_bstride = 0;  // in bytes
    float* y = nullptr;
    int64_t ldy = 0, y_bstride = 0;  // in floats
    int64_t M = 0, N = 0, K = 0;
    int batch = 1;
    const int* groups = nullptr;  // device
    const int* x_rows = nullptr;  // device
    // Device scratch of gemv_scratch_bytes(wt, M, K) bytes for the decode GEMV (M ≤ 8) of a
    // block format: the activation rows quantised to 8-bit blocks for integer dot products.
    // Null (or a size of 0): the f32-activation path.
    void* scratch = nullptr;
    // x already quantised in that layout by the kernel that made it (add_rms_norm's yq,
    // mla_attend's ctx_q8 for a batch of single rows): the integer path reads it and skips
    // its own quantise launch.
    const void* xq = nullptr;
    // A batch of single rows (M = 1) of K ≤ kInlineRowK: each block of the integer GEMV
    // quantises its batch row of x itself, as the quantise launch would (no scratch, no
    // launch; MLA's k_b right after the projection that makes q).
    bool quantise_rows = false;
    // gemv_swiglu (batch 1, ldy = N): also y quantised here (q8_rows_bytes(M, N) bytes, the
    // layout of `xq`) where its kernel can; gemv_swiglu returns whether it did. gemm, a
    // batch of single rows (M = 1; MLA's v_b): y's row of batch · N values quantised as one
    // row (q8_rows_bytes(1, batch · N)) where its kernel takes 32 rows a block; gemm returns
    // whether it did.
    void* yq = nullptr;
};
constexpr int64_t kInlineRowK = 1024;
// batch > 1: a strided batch of single rows (M = 1), each quantised apart.
size_t gemv_scratch_bytes(WType wt, int64_t M, int64_t K, int batch = 1);
bool gemm(const GemmArgs& a, cudaStream_t s);  // true: y also quantised into a.yq
// The gate and up projections of a SwiGLU MLP for M ≤ 8 rows in one pass: y[m][n] =
// silu(x[m]·G[n]) · (x[m]·U[n]), where `a` describes G (a.w) and `up` is U, of the same
// type and shape. No intermediate leaves registers. True: y was also quantised into a.yq
// (the interleaved layouts' kernel; the product reading y can take it as its `xq`).
bool gemv_swiglu(const GemmArgs& a, const void* up, cudaStream_t s);

void get_rows(const void* w, WType wt, int64_t cols, int64_t n_vocab, const int32_t* ids, int64_t n, float* y,
              DevError* err, cudaStream_t s);
void add(const float* a, const float* b, int64_t n, float* y, cudaStream_t s);
void swiglu(const float* g, const float* u, int64_t n, float* y, cudaStream_t s);
// dst[r][c] = src[r][c] for r < rows, c < cols, with row strides lds and ldd (floats).
void copy2d(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols, cudaStream_t s);

constexpr int kMaxRopeHalf = 128;
struct RopeArgs {
    int64_t rows = 0, cols = 0;
    int n_head = 1, head_dim = 0, rope_offset = 0, rope_dim = 0;
    float attn_factor = 1.0f;
    float inv_freq[kMaxRopeHalf] = {};
};
// y = x with the rope part of every head rotated, in one pass (the copy is fused), the
// angles computed once per row for all heads (fused.cu).
void rope_rows(const RopeArgs& a, const int32_t* positions, const float* x, float* y, cudaStream_t s);
// rope_rows for MLA's decode query (rope_q8_applies: one row of n_head heads [nope | rope],
// nope a multiple of 32 and ≤ 2·kMaxRopeHalf), y bit for bit the same, which also writes
// each head's nope part quantised to q8_rows as the n_head rows of a per-head integer
// GEMV (gemv_q8.h's layout, q8_rows_bytes(n_head, nope) bytes; GemmArgs::xq for k_b).
bool rope_q8_applies(const RopeArgs& a);
void rope_rows_q8(const RopeArgs& a, const int32_t* positions, const float* x, float* y, void* q8_rows,
                  cudaStream_t s);
// MLA's latent side at decode in one launch (fused.cu): kv is kv_a's row [kv_lora | rope];
// lat = rms_norm(kv[0..kv_lora)) · gain, kpe = the rope part rotated by a (one head, all of
// it), and [lat | kpe] stored as the cache row ([n_ctx][kv_lora + rope]) at positions[0]
// (outside the context: DevError code 3), bit for bit add_rms_norm, rope_rows and
// mla_store apart. cs_out (optional, rope_dim floats): the angles' (cos, sin) pairs, for
// a query at the same position (mla_attend's pe_cs). mla_latent_applies: kv_lora ≤ 512
// and a of that shape.
bool mla_latent_applies(int kv_lora, const RopeArgs& a);
void mla_latent(const float* kv, int kv_lora, const void* gain, WType wt, float eps, const RopeArgs& a,
                const int32_t* positions, float* lat, float* kpe, float* cache, int64_t n_ctx, DevError* err,
                cudaStream_t s, float* cs_out = nullptr);
// RMS norm, alone or fused with the residual adds before it (fused.cu), bit for bit the
// unfused ops: v = a (b null), a + b, or with c: mid = a + b and v = c + mid; sum = v
// (when given); y = rms_norm(v, eps) · gain. yq (cols a multiple of 32; q8_rows_bytes(rows,
// cols) bytes): y quantised there too, as the integer GEMV quantises its input (GemmArgs::xq).
void add_rms_norm(const float* a, const float* b, const float* c, float* mid, float* sum, const void* gain, WType wt,
                  float eps, int64_t rows, int64_t cols, float* y, cudaStream_t s, void* yq = nullptr);

// Absorbed MLA over the latent cache ([n_ctx][width], width = kv_lora + qk_rope).
// mla_store writes the batch's rows at positions[0..T-1] (device; a position outside the
// context is recorded as DevError code 3). mla_attend takes q_abs [T][H][kv_lora]
// (W_kbᵀ q_nope) and q_pe (row (t, h) at q_pe + (t·H + h)·pe_ld, width − kv_lora values)
// and writes ctx [T][H][kv_lora] (with ctx_q8 and T = 1, also quantised there as the
// H rows of the per-head v_b GEMV: GemmArgs::xq), the softmax-weighted sum of cached
// latents over positions ≤ positions[t]; the sequence is split over blocks
// (flash-decoding) and merged. scratch: mla_scratch_floats(...) floats. Positions come
// from device memory so that a captured decode step replays at any position. The split
// kernel asks L2 for split_ahead and the merge for merge_ahead before they wait for the
// kernel ahead of them (the products after the attention: v_b, the output projection).
constexpr int kMlaMaxWidth = 1024;
// Weights a latency-bound kernel asks L2 for before it waits for the kernel ahead of it,
// for a product soon after it (HBM is otherwise idle then): the first `prefix` bytes of
// each of `rows` rows, `row_bytes` apart from `base`. rows 0: nothing.
struct L2Ahead {
    const void* base = nullptr;
    int64_t rows = 0, row_bytes = 0, prefix = 0;
};
void mla_store(float* cache, int64_t width, int64_t n_ctx, const float* latent, const float* k_pe, int kv_lora,
               int qk_rope, const int32_t* positions, int64_t T, DevError* err, cudaStream_t s);
struct MlaPlan {
    int n_split = 1;
    int chunk = 1;           // positions per split; 0: each query splits what it sees evenly
    int chunk_cap = 1;       // the most positions a split can get (shared memory is sized by it)
    int64_t t_per_pass = 1;  // queries per launch (bounds the scratch)
};
// For a batch whose longest query sees n_kv positions (prefill: sized to that length).
MlaPlan mla_plan(int n_head, int64_t T, int64_t n_kv, int kv_lora, int n_sm);
// For decode (T ≤ 8): a launch shape fixed by the context size alone.
MlaPlan mla_plan_decode(int n_head, int64_t T, int64_t n_ctx, int kv_lora, int n_sm);
int64_t mla_scratch_floats(const MlaPlan& p, int n_head, int kv_lora);
// pe_cs (one query; optional): q_pe is not yet rotated, and the split kernel rotates its
// pairs as it loads them by these (cos, sin) pairs (mla_latent's cs_out; rope_rows' bits).
void mla_attend(const MlaPlan& p, const float* q_abs, const float* q_pe, int64_t pe_ld, const float* cache,
                int64_t width, int64_t n_ctx, int kv_lora, int n_head, int64_t T, const int32_t* positions,
                float scale, float* ctx, float* scratch, cudaStream_t s, void* ctx_q8 = nullptr,
                const L2Ahead& split_ahead = {}, const L2Ahead& merge_ahead = {}, const float* pe_cs = nullptr);

// Launches from this host thread skip programmatic dependent launch while set: the
// backend sets it around a batch's (prefill's) ops, multi-wave GEMMs for which an early
// launch buys nothing and which it made slower (pp512 −1.3 % on the V3 slice, −6 % on
// V2-Lite; docs/performance-cuda.md, slice 8).
void set_pdl_suspended(bool on);
bool pdl_suspended();

// Routing: logits [T][E] (already x · W_gateᵀ) → [T][2k] (k weights, then k ids as
// floats), with scores, bias, group limits, top-k, normalisation and scale fused.
constexpr int kMaxExperts = 512;
struct RouteArgs {
    int64_t T = 0;
    int n_expert = 0, n_used = 0, n_group = 1, topk_group = 1;
    bool sigmoid = false;
    int method = 0;  // 0 greedy, 1 group_limited_greedy, 2 noaux_tc
    bool norm_topk = false;
    float scale = 1.0f;
    const void* bias = nullptr;  // [E] or null
    WType bias_t = WType::f32;
};
void moe_route(const RouteArgs& a, const float* logits, float* out, cudaStream_t s);

// Experts a moe_ffn node computes (bit e set: expert e is this node's).
struct ExpertMask {
    uint32_t bits[kMaxExperts / 32] = {};
};
struct MoeArgs {
    int64_t T = 0, D = 0, F = 0;  // tokens, n_embd, expert width
    int n_used = 0, n_expert = 0;
    const void *gate = nullptr, *up = nullptr, *down = nullptr;
    WType wt = WType::f32;       // gate and up
    WType wt_down = WType::f32;  // down (mixes such as Q4_K_M give it more bits)
    ExpertMask mask;
    void* scratch = nullptr;  // device, moe_scratch_bytes(*this) bytes (see GemmArgs::scratch)
    const void* xq = nullptr;  // the T input rows already quantised (see GemmArgs::xq)
    // Decode pairs: the gate/up also writes act quantised into the down's part of the
    // scratch where its kernel can (quantise_act; moe_pairs_gate_up then returns true), and
    // the down reads that (act_q8) instead of quantising act itself.
    bool quantise_act = false, act_q8 = false;
};
size_t moe_scratch_bytes(const MoeArgs& a);
// Tuning aid (a hidden test prints it on the device): mean µs of one decode product on
// synthetic weights, cycled over enough copies that L2 holds none of them. kind 0: gemm
// (M rows of an N×K matrix); 1: gemv_swiglu (two N×K); 2: the MoE decode pairs of M
// tokens with 8 experts each (gate/up N×K, down K×N). int_path false: no scratch, the
// f32-activation kernels. −1 without a device.
double time_decode_us(int kind, WType t, int64_t M, int64_t N, int64_t K, bool int_path, int iters);
// The same for a kernel that only reads `bytes` (32 KiB a block, 16-byte loads, launched as
// the GEMVs are): the ceiling a decode product of that size could reach.
double time_read_us(int64_t bytes, int iters);
// Decode (few tokens): one (token, slot) pair per grid row, reading only the chosen
// experts' rows. act [T·k][F], y [T·k][D]. moe_pairs_gate_up: true where act was also
// quantised for the down (MoeArgs::quantise_act).
bool moe_pairs_gate_up(const MoeArgs& a, const float* x, const float* route, float* act, DevError* err,
                       cudaStream_t s);
void moe_pairs_down(const MoeArgs& a, const float* act, const float* route, float* y, cudaStream_t s);
// moe_pairs_down and moe_combine (pair_row null) in one launch, out [T][D]: a block takes
// 32 rows of every slot of a token and adds them itself. Interleaved down types with
// n_used ≤ 8 only; false: nothing launched.
bool moe_pairs_down_sum(const MoeArgs& a, const float* act, const float* route, float* out, cudaStream_t s);
// out[t] = Σ_j weight_j · y[row(t, j)] over the slots whose expert is in the mask; row is
// pair_row[t·k + j] (−1: skipped) or t·k + j when pair_row is null.
void moe_combine(const MoeArgs& a, const float* y, const float* route, const int* pair_row, float* out,
                 cudaStream_t s);

}  // namespace ds3::cuda
