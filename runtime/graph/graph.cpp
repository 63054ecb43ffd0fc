#include "runtime/graph/graph.h"

#include <atomic>
#include <string>

#include "runtime/error.h"

namespace ds3 {

namespace {

std::string shape_str(const Weight& w) {
    std::string s = "{";
    for (int i = 0; i < w.n_dims; ++i) {
        if (i) s += ", ";
        s += std::to_string(w.ne[static_cast<size_t>(i)]);
    }
    return s + "}";
}

[[noreturn]] void shape_error(const std::string& node, const std::string& msg) {
    throw Error("graph", node + ": " + msg);
}

}  // namespace

uint64_t Weight::row_bytes() const {
    auto n = type_nbytes(type, static_cast<uint64_t>(ne[0]));
    return n ? *n : 0;
}

const char* op_name(Op op) {
    switch (op) {
        case Op::input: return "input";
        case Op::get_rows: return "get_rows";
        case Op::rms_norm: return "rms_norm";
        case Op::mul_mat: return "mul_mat";
        case Op::add: return "add";
        case Op::swiglu: return "swiglu";
        case Op::view: return "view";
        case Op::rope_yarn: return "rope_yarn";
        case Op::mla_attn: return "mla_attn";
        case Op::moe_route: return "moe_route";
        case Op::moe_ffn: return "moe_ffn";
        case Op::shared_ffn: return "shared_ffn";
        case Op::logits: return "logits";
    }
    return "?";
}

int Graph::find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? -1 : it->second;
}

uint64_t Graph::next_version() {
    static std::atomic<uint64_t> last{0};
    return last.fetch_add(1, std::memory_order_relaxed) + 1;
}

void Graph::set_attn_pos0(int64_t pos0) {
    for (Node& n : nodes_)
        if (n.op == Op::mla_attn) n.attn.pos0 = pos0;
}

int Graph::push(Node n) {
    version_ = next_version();
    if (find(n.name) >= 0) shape_error(n.name, "a node of that name already exists");
    for (int s : n.src)
        if (s < 0 || s >= size()) shape_error(n.name, "source index " + std::to_string(s) + " out of range");
    if (n.layer < 0) n.layer = cur_layer_;
    index_.emplace(n.name, size());
    nodes_.push_back(std::move(n));
    return size() - 1;
}

const Node& Graph::check_src(int id, const char* what) const {
    if (id < 0 || id >= size())
        throw Error("graph", std::string(what) + ": source index " + std::to_string(id) + " out of range");
    return nodes_[static_cast<size_t>(id)];
}

int Graph::input(std::string name, DType type, int64_t rows, int64_t cols) {
    Node n;
    n.op = Op::input;
    n.name = std::move(name);
    n.type = type;
    n.rows = rows;
    n.cols = cols;
    return push(std::move(n));
}

int Graph::get_rows(std::string name, const Weight& embd, int ids) {
    const Node& s = check_src(ids, name.c_str());
    if (s.type != DType::i32 || s.cols != 1) shape_error(name, "ids must be i32 [T, 1]");
    if (embd.n_dims != 2) shape_error(name, embd.name + " must be 2-D, found " + shape_str(embd));
    Node n;
    n.op = Op::get_rows;
    n.name = std::move(name);
    n.rows = s.rows;
    n.cols = embd.ne[0];
    n.src = {ids};
    n.w = {&embd};
    return push(std::move(n));
}

int Graph::rms_norm(std::string name, int x, const Weight& gain, float eps) {
    const Node& s = check_src(x, name.c_str());
    if (gain.n_elements() != s.cols)
        shape_error(name, gain.name + " has " + std::to_string(gain.n_elements()) +
                              " elements, expected " + std::to_string(s.cols));
    Node n;
    n.op = Op::rms_norm;
    n.name = std::move(name);
    n.rows = s.rows;
    n.cols = s.cols;
    n.src = {x};
    n.w = {&gain};
    n.eps = eps;
    return push(std::move(n));
}

int Graph::mul_mat(std::string name, int x, const Weight& w) {
    const Node& s = check_src(x, name.c_str());
    if (w.n_dims != 2 || w.ne[0] != s.cols)
        shape_error(name, w.name + " is " + shape_str(w) + ", expected {" + std::to_string(s.cols) + ", *}");
    Node n;
    n.op = Op::mul_mat;
    n.name = std::move(name);
    n.rows = s.rows;
    n.cols = w.ne[1];
    n.src = {x};
    n.w = {&w};
    return push(std::move(n));
}

int Graph::add(std::string name, int a, int b) {
    const Node& sa = check_src(a, name.c_str());
    const Node& sb = check_src(b, name.c_str());
    if (sa.rows != sb.rows || sa.cols != sb.cols) shape_error(name, "operands differ in shape");
    Node n;
    n.op = Op::add;
    n.name = std::move(name);
    n.rows = sa.rows;
    n.cols = sa.cols;
    n.src = {a, b};
    return push(std::move(n));
}

int Graph::swiglu(std::string name, int gate, int up) {
    const Node& sa = check_src(gate, name.c_str());
    const Node& sb = check_src(up, name.c_str());
    if (sa.rows != sb.rows || sa.cols != sb.cols) shape_error(name, "gate and up differ in shape");
    Node n;
    n.op = Op::swiglu;
    n.name = std::move(name);
    n.rows = sa.rows;
    n.cols = sa.cols;
    n.src = {gate, up};
    return push(std::move(n));
}

int Graph::view(std::string name, int x, int64_t col0, int64_t cols) {
    const Node& s = check_src(x, name.c_str());
    if (col0 < 0 || cols <= 0 || col0 + cols > s.cols)
        shape_error(name, "columns [" + std::to_string(col0) + ", " + std::to_string(col0 + cols) +
                              ") outside [0, " + std::to_string(s.cols) + ")");
    Node n;
    n.op = Op::view;
    n.name = std::move(name);
    n.rows = s.rows;
    n.cols = cols;
    n.src = {x};
    n.col0 = col0;
    n.src_rows = s.rows;
    n.src_cols = s.cols;
    return push(std::move(n));
}

int Graph::rope_yarn(std::string name, int x, int positions, int n_head, int head_dim,
                     int rope_offset, int rope_dim, std::shared_ptr<const RopeTable> table) {
    const Node& s = check_src(x, name.c_str());
    const Node& p = check_src(positions, name.c_str());
    if (p.type != DType::i32 || p.rows != s.rows) shape_error(name, "positions must be i32 [T, 1]");
    if (static_cast<int64_t>(n_head) * head_dim != s.cols || rope_offset + rope_dim > head_dim ||
        rope_dim % 2 != 0)
        shape_error(name, "rope layout does not fit the input columns");
    if (!table || table->inv_freq.size() != static_cast<size_t>(rope_dim / 2))
        shape_error(name, "rope table must have rope_dim / 2 frequencies");
    Node n;
    n.op = Op::rope_yarn;
    n.name = std::move(name);
    n.rows = s.rows;
    n.cols = s.cols;
    n.src = {x, positions};
    n.n_head = n_head;
    n.head_dim = head_dim;
    n.rope_offset = rope_offset;
    n.rope_dim = rope_dim;
    n.rope = std::move(table);
    return push(std::move(n));
}

int Graph::mla_attn(std::string name, int q, int kv_latent, int k_pe, const Weight& k_b,
                    const Weight& v_b, const AttnParams& p, int layer, int positions) {
    const Node& sq = check_src(q, name.c_str());
    const Node& sc = check_src(kv_latent, name.c_str());
    const Node& sk = check_src(k_pe, name.c_str());
    if (sq.cols != static_cast<int64_t>(p.n_head) * (p.qk_nope + p.qk_rope))
        shape_error(name, "q must have n_head * (qk_nope + qk_rope) columns");
    if (sc.cols != p.kv_lora || sk.cols != p.qk_rope || sc.rows != sq.rows || sk.rows != sq.rows)
        shape_error(name, "latent must be [T, kv_lora] and k_pe [T, qk_rope]");
    if (positions >= 0) {
        const Node& sp = check_src(positions, name.c_str());
        if (sp.type != DType::i32 || sp.rows != sq.rows || sp.cols != 1)
            shape_error(name, "positions must be i32 [T, 1]");
    }
    // W_kb per head maps q_nope (qk_nope) to the latent space (kv_lora); W_vb maps the
    // attended latent back to v_head values.
    if (k_b.ne[0] != p.qk_nope || k_b.ne[1] != p.kv_lora || k_b.ne[2] != p.n_head)
        shape_error(name, k_b.name + " is " + shape_str(k_b) + ", expected {qk_nope, kv_lora, n_head}");
    if (v_b.ne[0] != p.kv_lora || v_b.ne[1] != p.v_head || v_b.ne[2] != p.n_head)
        shape_error(name, v_b.name + " is " + shape_str(v_b) + ", expected {kv_lora, v_head, n_head}");
    Node n;
    n.op = Op::mla_attn;
    n.name = std::move(name);
    n.rows = sq.rows;
    n.cols = static_cast<int64_t>(p.n_head) * p.v_head;
    n.src = {q, kv_latent, k_pe};
    if (positions >= 0) n.src.push_back(positions);
    n.w = {&k_b, &v_b};
    n.attn = p;
    n.layer = layer;
    return push(std::move(n));
}

int Graph::moe_route(std::string name, int x, const Weight& gate_inp, const Weight* bias,
                     const RouteParams& p) {
    const Node& s = check_src(x, name.c_str());
    if (gate_inp.ne[0] != s.cols || gate_inp.ne[1] != p.n_expert)
        shape_error(name, gate_inp.name + " is " + shape_str(gate_inp) + ", expected {n_embd, n_expert}");
    if (bias && bias->n_elements() != p.n_expert)
        shape_error(name, bias->name + " must have n_expert elements");
    if (p.n_used <= 0 || p.n_used > p.n_expert || p.n_group <= 0 || p.n_expert % p.n_group != 0 ||
        p.topk_group <= 0 || p.topk_group > p.n_group ||
        p.n_used > (p.n_expert / p.n_group) * p.topk_group)
        shape_error(name, "inconsistent routing parameters");
    if (p.method == TopkMethod::noaux_tc && p.n_expert / p.n_group < 2)
        shape_error(name, "noaux_tc needs at least 2 experts per group");
    Node n;
    n.op = Op::moe_route;
    n.name = std::move(name);
    n.rows = s.rows;
    n.cols = 2 * p.n_used;
    n.src = {x};
    n.w = {&gate_inp};
    if (bias) n.w.push_back(bias);
    n.route = p;
    return push(std::move(n));
}

int Graph::moe_ffn(std::string name, int x, int route, const Weight& gate_exps,
                   const Weight& up_exps, const Weight& down_exps, const RouteParams& p) {
    const Node& s = check_src(x, name.c_str());
    const Node& r = check_src(route, name.c_str());
    if (r.rows != s.rows || r.cols != 2 * p.n_used) shape_error(name, "route must be [T, 2k]");
    int64_t n_ff = gate_exps.ne[1];
    if (gate_exps.ne[0] != s.cols || gate_exps.ne[2] != p.n_expert)
        shape_error(name, gate_exps.name + " is " + shape_str(gate_exps) + ", expected {n_embd, n_ff, n_expert}");
    if (up_exps.ne != gate_exps.ne) shape_error(name, up_exps.name + " differs in shape from " + gate_exps.name);
    if (down_exps.ne[0] != n_ff || down_exps.ne[1] != s.cols || down_exps.ne[2] != p.n_expert)
        shape_error(name, down_exps.name + " is " + shape_str(down_exps) + ", expected {n_ff, n_embd, n_expert}");
    Node n;
    n.op = Op::moe_ffn;
    n.name = std::move(name);
    n.rows = s.rows;
    n.cols = s.cols;
    n.src = {x, route};
    n.w = {&gate_exps, &up_exps, &down_exps};
    n.route = p;
    return push(std::move(n));
}

int Graph::shared_ffn(std::string name, int x, const Weight& gate, const Weight& up, const Weight& down) {
    const Node& s = check_src(x, name.c_str());
    if (gate.n_dims != 2 || gate.ne[0] != s.cols || up.ne != gate.ne)
        shape_error(name, gate.name + "/" + up.name + " must be {n_embd, n_ff}");
    if (down.n_dims != 2 || down.ne[0] != gate.ne[1] || down.ne[1] != s.cols)
        shape_error(name, down.name + " is " + shape_str(down) + ", expected {n_ff, n_embd}");
    Node n;
    n.op = Op::shared_ffn;
    n.name = std::move(name);
    n.rows = s.rows;
    n.cols = s.cols;
    n.src = {x};
    n.w = {&gate, &up, &down};
    return push(std::move(n));
}

int Graph::logits(std::string name, int x, const Weight& output, bool last_only) {
    const Node& s = check_src(x, name.c_str());
    if (output.n_dims != 2 || output.ne[0] != s.cols)
        shape_error(name, output.name + " is " + shape_str(output) + ", expected {n_embd, n_vocab}");
    Node n;
    n.op = Op::logits;
    n.name = std::move(name);
    n.rows = last_only ? 1 : s.rows;
    n.cols = output.ne[1];
    n.src = {x};
    n.w = {&output};
    n.last_only = last_only;
    n.src_rows = s.rows;
    n.src_cols = s.cols;
    return push(std::move(n));
}

}  // namespace ds3
