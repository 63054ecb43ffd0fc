// deepseek2: the graph of one token batch (absorbed MLA, MoE with shared experts).
#include <string>

#include "models/deepseek2.h"
#include "runtime/error.h"

namespace ds3 {

namespace {

std::string ln(int64_t il, const char* what) {
    std::string s = "l";  // appended piecewise: GCC 12 warns falsely on "l" + std::string
    s += std::to_string(il);
    s += '.';
    s += what;
    return s;
}

// Attention of layer il on the normalised input x [T, n_embd] → [T, n_embd].
int build_attention(Graph& g, const Deepseek2Model& m, const Deepseek2Layer& L, int64_t il, int x, int pos,
                    const BatchSpec& b) {
    const Deepseek2HParams& hp = m.hp;
    const int H = static_cast<int>(hp.n_head), nope = static_cast<int>(hp.qk_nope), rope = static_cast<int>(hp.qk_rope);
    int q;
    if (L.q_a) {
        int qa = g.mul_mat(ln(il, "q_a"), x, *L.q_a);                                // [T, q_lora]
        int qn = g.rms_norm(ln(il, "q_a_norm"), qa, *L.q_a_norm, hp.rms_eps);
        q = g.mul_mat(ln(il, "q"), qn, *L.q_b);                                      // [T, H·(nope+rope)]
    } else {
        q = g.mul_mat(ln(il, "q"), x, *L.q);                                         // [T, H·(nope+rope)]
    }
    // Each head is [q_nope | q_pe]; only q_pe rotates.
    q = g.rope_yarn(ln(il, "q_roped"), q, pos, H, nope + rope, nope, rope, m.rope);

    int kv = g.mul_mat(ln(il, "kv_a"), x, *L.kv_a_mqa);                              // [T, kv_lora + rope]
    int c = g.view(ln(il, "kv_c"), kv, 0, hp.kv_lora);                               // [T, kv_lora]
    int lat = g.rms_norm(ln(il, "kv_latent"), c, *L.kv_a_norm, hp.rms_eps);          // cached
    int kpe = g.view(ln(il, "k_pe_raw"), kv, hp.kv_lora, rope);                      // [T, rope], one shared head
    kpe = g.rope_yarn(ln(il, "k_pe"), kpe, pos, 1, rope, 0, rope, m.rope);           // cached

    AttnParams ap;
    ap.n_head = H;
    ap.qk_nope = nope;
    ap.qk_rope = rope;
    ap.v_head = static_cast<int>(hp.v_head);
    ap.kv_lora = static_cast<int>(hp.kv_lora);
    ap.scale = hp.softmax_scale();
    ap.pos0 = b.pos0;
    int ctx = g.mla_attn(ln(il, "attn_ctx"), q, lat, kpe, *L.k_b, *L.v_b, ap, static_cast<int>(il), pos);  // [T, H·v_head]
    return g.mul_mat(ln(il, "attn_out"), ctx, *L.attn_out);                          // [T, n_embd]
}

// Feed-forward of layer il on the normalised input x [T, n_embd] → [T, n_embd].
int build_ffn(Graph& g, const Deepseek2Model& m, const Deepseek2Layer& L, int64_t il, int x) {
    // A dense layer's MLP is the shared experts' op: one node, whose decode kernels fuse
    // gate, up and SwiGLU (the same arithmetic as three products and a SwiGLU).
    if (L.ffn_gate) return g.shared_ffn(ln(il, "ffn_out"), x, *L.ffn_gate, *L.ffn_up, *L.ffn_down);
    const RouteParams rp = m.hp.route_params();
    int route = g.moe_route(ln(il, "moe_route"), x, *L.gate_inp, L.exp_probs_b, rp);  // [T, 2k]
    int moe = g.moe_ffn(ln(il, "moe_out"), x, route, *L.gate_exps, *L.up_exps, *L.down_exps, rp);
    if (!L.gate_shexp) return moe;
    int sh = g.shared_ffn(ln(il, "shexp_out"), x, *L.gate_shexp, *L.up_shexp, *L.down_shexp);
    return g.add(ln(il, "ffn_out"), moe, sh);
}

}  // namespace

Graph build_graph(const Deepseek2Model& m, const BatchSpec& b) {
    check(b.n_tokens > 0, "model", "a batch needs at least one token");
    const Deepseek2HParams& hp = m.hp;
    Graph g;
    int tokens = g.input("tokens", DType::i32, b.n_tokens, 1);
    int pos = g.input("positions", DType::i32, b.n_tokens, 1);
    int x = g.get_rows("embd", *m.token_embd, tokens);  // [T, n_embd]
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const Deepseek2Layer& L = m.layers[static_cast<size_t>(il)];
        g.set_layer(static_cast<int>(il));
        int an = g.rms_norm(ln(il, "attn_norm"), x, *L.attn_norm, hp.rms_eps);
        int attn = build_attention(g, m, L, il, an, pos, b);
        int h = g.add(ln(il, "attn_resid"), x, attn);
        int fn = g.rms_norm(ln(il, "ffn_norm"), h, *L.ffn_norm, hp.rms_eps);
        int ffn = build_ffn(g, m, L, il, fn);
        x = g.add(ln(il, "resid"), h, ffn);
    }
    g.set_layer(-1);
    int out = g.rms_norm("result_norm", x, *m.output_norm, hp.rms_eps);
    int logits = g.logits("logits", out, *m.output, !b.all_logits);
    g.mark_output(logits);
    return g;
}

}  // namespace ds3
