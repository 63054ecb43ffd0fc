// The graph IR: a list of coarse, fused ops sized for the MLA + sparse-MoE family
// (docs/runtime.md). A model builds one Graph per token batch; the scheduler
// (runtime/sched) places every node on a backend and runs it.
//
// Every activation is a dense row-major matrix [rows][cols] (rows = tokens of the batch,
// cols = features), f32 unless it is an id input (i32). Weights are read-only views
// (Weight) with ggml's dimension order: ne[0] is the contiguous dimension, so a 2-D
// weight with ne {in, out} holds one output row of `in` values after another, and a 3-D
// expert stack {in, out, n_expert} holds n_expert such matrices.
//
// Nodes are appended in execution order and refer to earlier nodes by index; each has a
// unique name ("l3.kv_latent") so a debug run can dump any intermediate.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "quantize/types.h"

namespace ds3 {

// A weight tensor: a view on mapped file bytes or on storage owned by a WeightStore.
struct Weight {
    std::string name;
    TypeId type = TypeId::F32;
    int n_dims = 0;
    std::array<int64_t, 4> ne{1, 1, 1, 1};
    const uint8_t* data = nullptr;
    uint64_t nbytes = 0;

    int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
    uint64_t row_bytes() const;  // bytes of one ne[0] row
    // Row `row` of matrix `mat` (3-D stacks: mat = expert index).
    const uint8_t* row(int64_t row, int64_t mat = 0) const {
        return data + static_cast<uint64_t>(mat * ne[1] + row) * row_bytes();
    }
};

enum class Op : uint8_t {
    input,       // filled by the caller (token ids, positions)
    get_rows,    // w[0] = embedding {n_embd, n_vocab}; src0 = ids i32 [T,1] → [T, n_embd]
    rms_norm,    // src0 [T, n] , w[0] = gain {n} → [T, n]
    mul_mat,     // src0 [T, in], w[0] {in, out} → [T, out]
    add,         // src0 + src1, same shape
    swiglu,      // silu(src0) * src1
    view,        // columns [col0, col0 + cols) of src0 (a copy on the CPU)
    rope_yarn,   // rotate interleaved pairs of the rope part of each head; src1 = positions
    mla_attn,    // absorbed MLA; writes the latent cache of `layer`; src3 = positions (optional)
    moe_route,   // src0 [T, n_embd] → [T, 2k]: k weights, then k expert ids (as floats)
    moe_ffn,     // src0 [T, n_embd], src1 route → weighted sum over the selected experts
    shared_ffn,  // gate/up/SwiGLU/down of a plain MLP (shared experts)
    logits,      // like mul_mat; with last_only, only the last row of src0
};
const char* op_name(Op op);

enum class DType : uint8_t { f32, i32 };

// RoPE on interleaved pairs (x[2i], x[2i+1]) — the layout of the DeepSeek releases (and
// of GGUF files, which keep it) — by angle pos · inv_freq[i], with cos/sin multiplied by
// attn_factor (YaRN's mscale ratio; 1 without YaRN). The model computes inv_freq
// (plain or YaRN-blended), so backends need no knowledge of the scaling scheme.
struct RopeTable {
    std::vector<float> inv_freq;  // [dim / 2]
    float attn_factor = 1.0f;
};

enum class ScoringFunc : uint8_t { softmax, sigmoid };
enum class TopkMethod : uint8_t { greedy, group_limited_greedy, noaux_tc };

struct RouteParams {
    int n_expert = 0;
    int n_used = 0;  // k
    int n_group = 1;
    int topk_group = 1;
    ScoringFunc scoring = ScoringFunc::softmax;
    TopkMethod method = TopkMethod::greedy;
    bool norm_topk = false;
    float scale = 1.0f;  // routed_scaling_factor
};

struct AttnParams {
    int n_head = 0;
    int qk_nope = 0;
    int qk_rope = 0;
    int v_head = 0;
    int kv_lora = 0;
    float scale = 0.0f;  // softmax scale, mscale² included
    int64_t pos0 = 0;    // position of the batch's first token
};

struct Node {
    Op op = Op::input;
    std::string name;
    DType type = DType::f32;
    int64_t rows = 0;
    int64_t cols = 0;
    std::vector<int> src;
    std::vector<const Weight*> w;
    int layer = -1;  // model layer (mla_attn: which cache slot)

    // op parameters (only the op's own are meaningful)
    float eps = 0.0f;                 // rms_norm
    int64_t col0 = 0;                 // view
    int64_t src_rows = 0, src_cols = 0;  // view, logits: the shape of src0
    int n_head = 1, head_dim = 0, rope_offset = 0, rope_dim = 0;  // rope_yarn
    std::shared_ptr<const RopeTable> rope;                        // rope_yarn
    AttnParams attn;                  // mla_attn
    RouteParams route;                // moe_route, moe_ffn (n_expert, n_used)
    // moe_ffn: experts this node computes (mask over n_expert; empty = all). The
    // scheduler splits one moe_ffn into one node per backend holding some experts.
    std::vector<uint8_t> experts;
    bool last_only = false;           // logits

    int backend = -1;  // set by the scheduler
    bool output = false;  // kept after execution (read back by the caller)

    int64_t n_elements() const { return rows * cols; }
    uint64_t nbytes() const { return static_cast<uint64_t>(n_elements()) * 4; }
};

class Graph {
public:
    Graph() : version_(next_version()) {}
    Graph(const Graph&) = default;
    Graph& operator=(const Graph&) = default;
    // A moved-from graph takes a fresh version: what a backend derived from the nodes it
    // had must not be reused for it.
    Graph(Graph&& o) noexcept
        : nodes_(std::move(o.nodes_)), index_(std::move(o.index_)), cur_layer_(o.cur_layer_), version_(o.version_) {
        o.renew();
    }
    Graph& operator=(Graph&& o) noexcept {
        if (this == &o) return *this;
        nodes_ = std::move(o.nodes_);
        index_ = std::move(o.index_);
        cur_layer_ = o.cur_layer_;
        version_ = o.version_;
        o.renew();
        return *this;
    }
    const std::vector<Node>& nodes() const { return nodes_; }
    std::vector<Node>& nodes() {
        version_ = next_version();
        return nodes_;
    }
    const Node& node(int id) const { return nodes_.at(static_cast<size_t>(id)); }
    Node& node(int id) {
        version_ = next_version();
        return nodes_.at(static_cast<size_t>(id));
    }
    // A number, unique in the process, that changes whenever the nodes may change: every
    // non-const access to them (and every builder) takes a fresh one, and a copy keeps its
    // source's. A backend may keep what it derives from a graph's nodes for as long as the
    // number stays (the CUDA backend's replay key). So a reference to a node taken before a
    // backend ran the graph must not be written through after: take it anew.
    uint64_t version() const { return version_; }
    // Every mla_attn node's attn.pos0 (the batch's first position) set to pos0, keeping
    // version(): what a backend derives from the nodes must not depend on it (a replayed
    // decode step reads its positions from the device).
    void set_attn_pos0(int64_t pos0);
    int find(const std::string& name) const;  // -1 when absent
    int size() const { return static_cast<int>(nodes_.size()); }

    // Builders: each checks shapes against the weights (throws Error("graph", ...)) and
    // returns the new node's index.
    int input(std::string name, DType type, int64_t rows, int64_t cols);
    int get_rows(std::string name, const Weight& embd, int ids);
    int rms_norm(std::string name, int x, const Weight& gain, float eps);
    int mul_mat(std::string name, int x, const Weight& w);
    int add(std::string name, int a, int b);
    int swiglu(std::string name, int gate, int up);
    int view(std::string name, int x, int64_t col0, int64_t cols);
    int rope_yarn(std::string name, int x, int positions, int n_head, int head_dim,
                  int rope_offset, int rope_dim, std::shared_ptr<const RopeTable> table);
    // positions (optional, i32 [T, 1]): the batch's positions, attn.pos0.. in order; device
    // backends read them from memory instead of attn.pos0 (a replayed step moves on).
    int mla_attn(std::string name, int q, int kv_latent, int k_pe, const Weight& k_b,
                 const Weight& v_b, const AttnParams& p, int layer, int positions = -1);
    int moe_route(std::string name, int x, const Weight& gate_inp, const Weight* bias,
                  const RouteParams& p);
    int moe_ffn(std::string name, int x, int route, const Weight& gate_exps,
                const Weight& up_exps, const Weight& down_exps, const RouteParams& p);
    int shared_ffn(std::string name, int x, const Weight& gate, const Weight& up,
                   const Weight& down);
    int logits(std::string name, int x, const Weight& output, bool last_only);

    void mark_output(int id) { node(id).output = true; }
    // Nodes built after this belong to model layer l (-1: none); placement uses it.
    void set_layer(int l) { cur_layer_ = l; }
    // Appends an already-made node (the scheduler's rewrite uses this).
    int push(Node n);

private:
    const Node& check_src(int id, const char* what) const;
    std::vector<Node> nodes_;
    std::unordered_map<std::string, int> index_;  // name → node (a 61-layer graph has ~1,500)
    int cur_layer_ = -1;
    uint64_t version_;
    static uint64_t next_version();
    void renew() {
        nodes_.clear();
        index_.clear();
        cur_layer_ = -1;
        version_ = next_version();
    }
};

}  // namespace ds3
