#include "models/runner.h"

#include <algorithm>
#include <numeric>

#include "runtime/error.h"

namespace ds3 {

Runner::Runner(const Deepseek2Model& model, std::vector<Backend*> backends, int64_t n_ctx, ExpertPlacement placement)
    : model_(model),
      sched_(std::move(backends), std::move(placement)),
      cache_(static_cast<int>(model.hp.n_layer), n_ctx, model.hp.kv_lora, model.hp.qk_rope) {}

std::vector<int> Runner::run(std::span<const int32_t> tokens, bool all_logits, const std::vector<std::string>& dump) {
    last_ = {};  // views of the step before are not valid past this point
    const int64_t T = static_cast<int64_t>(tokens.size());
    check(T > 0, "model", "eval needs at least one token");
    for (int32_t t : tokens)
        if (t < 0 || t >= model_.hp.n_vocab)
            throw Error("model", "token id " + std::to_string(t) + " outside the vocabulary [0, " +
                                     std::to_string(model_.hp.n_vocab) + ")");
    cache_.check_fits(T);

    BatchSpec b;
    b.n_tokens = T;
    b.pos0 = cache_.n_past();
    b.all_logits = all_logits;
    // A batch of a shape seen before reuses its placed graph with the new position: decode
    // builds and places once, and a backend that replays graphs sees the same nodes.
    Graph fresh;
    Graph* gp = &fresh;
    if (dump.empty()) {
        auto it = graphs_.find({T, all_logits});
        if (it == graphs_.end()) {
            if (graphs_.size() >= 8) graphs_.clear();  // prompts of many lengths: keep it bounded
            it = graphs_.emplace(std::make_pair(T, all_logits), sched_.place(build_graph(model_, b))).first;
        }
        gp = &it->second;
        gp->set_attn_pos0(b.pos0);
    } else {
        fresh = sched_.place(build_graph(model_, b));
    }
    const Graph& placed = *gp;

    std::vector<int32_t> positions(static_cast<size_t>(T));
    std::iota(positions.begin(), positions.end(), static_cast<int32_t>(b.pos0));
    const GraphInput inputs[] = {{placed.find("tokens"), tokens.data()}, {placed.find("positions"), positions.data()}};

    std::vector<int> fetch = {placed.find("logits")};
    for (const std::string& name : dump) {
        int id = placed.find(name);
        if (id < 0) throw Error("model", "--dump: no intermediate named '" + name + "' (e.g. embd, l0.kv_latent, l0.resid)");
        if (placed.node(id).type != DType::f32) throw Error("model", "--dump: '" + name + "' is not an f32 activation");
        fetch.push_back(id);
    }
    last_ = sched_.run(placed, inputs, &cache_, fetch);
    cache_.advance(T);
    return fetch;
}

std::vector<float> Runner::eval(std::span<const int32_t> tokens, bool all_logits, const std::vector<std::string>& dump,
                                std::map<std::string, std::vector<float>>* dumped) {
    const std::vector<int> fetch = run(tokens, all_logits, dump);
    Fetched got = std::move(last_);  // copied out here: nothing stays held for eval_last
    last_ = {};
    if (dumped)
        for (size_t i = 1; i < fetch.size(); ++i) {  // copies: a name may be asked twice
            const std::span<const float> v = got.at(fetch[i]);
            (*dumped)[dump[i - 1]].assign(v.begin(), v.end());
        }
    return got.take(fetch[0]);
}

std::span<const float> Runner::eval_last(std::span<const int32_t> tokens) {
    const std::vector<int> fetch = run(tokens, false, {});
    return last_.at(fetch[0]);
}

int32_t argmax(std::span<const float> logits) {
    // First maximum on ties, as torch.argmax does.
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

std::vector<int32_t> generate_greedy(Runner& r, std::span<const int32_t> prompt, int64_t n_new) {
    std::vector<int32_t> out;
    if (n_new <= 0) return out;
    std::span<const float> logits = r.eval_last(prompt);
    for (int64_t i = 0; i < n_new; ++i) {
        const int32_t next = argmax(logits);
        out.push_back(next);
        if (i + 1 < n_new) logits = r.eval_last(std::span<const int32_t>(&next, 1));
    }
    return out;
}

}  // namespace ds3
