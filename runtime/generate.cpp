#include "runtime/generate.h"

#include <algorithm>

#include "runtime/clock.h"
#include "runtime/error.h"

namespace ds3 {

const char* to_string(StopReason r) {
    switch (r) {
        case StopReason::eos: return "eos";
        case StopReason::stop_string: return "stop string";
        case StopReason::max_tokens: return "max tokens";
        case StopReason::context_full: return "context full";
        case StopReason::interrupted: return "interrupted";
        case StopReason::callback: return "callback";
    }
    return "?";
}

double GenerateStats::prompt_tps() const {
    const int64_t n = n_prompt - n_reused;
    return n > 0 && prompt_s > 0 ? static_cast<double>(n) / prompt_s : 0.0;
}

double GenerateStats::gen_tps() const { return n_gen > 0 && gen_s > 0 ? static_cast<double>(n_gen) / gen_s : 0.0; }

Generator::Generator(Runner& runner, const Tokenizer& tok) : runner_(runner), tok_(tok) {
    auto add = [&](std::optional<int32_t> id) {
        if (id && tok_.is_valid(*id) && std::find(eog_.begin(), eog_.end(), *id) == eog_.end()) eog_.push_back(*id);
    };
    add(tok_.data().eos_id);
    add(tok_.find_token("<｜end▁of▁sentence｜>"));
    add(tok_.find_token("<|im_end|>"));
    // Whatever was in the cache before we took over is unknown to us.
    runner_.reset();
}

bool Generator::is_eog(int32_t id) const { return std::find(eog_.begin(), eog_.end(), id) != eog_.end(); }

void Generator::reset() {
    runner_.reset();
    cached_.clear();
    last_logits_.clear();
}

void Generator::feed(std::span<const int32_t> prompt, const GenerateOptions& opt, GenerateStats& st,
                                   bool& interrupted) {
    if (prompt.empty()) throw Error("generate", "empty prompt: at least one token is needed");
    if (static_cast<int64_t>(prompt.size()) > n_ctx())
        throw Error("generate", "prompt of " + std::to_string(prompt.size()) + " tokens does not fit in the context of " +
                                    std::to_string(n_ctx()) + " tokens");
    // Someone else ran the Runner (or an eval threw half-way): start over.
    if (runner_.n_past() != static_cast<int64_t>(cached_.size())) reset();
    size_t common = 0;
    if (cached_.size() <= prompt.size() && std::equal(cached_.begin(), cached_.end(), prompt.begin()))
        common = cached_.size();
    else
        reset();
    if (common == prompt.size() && last_logits_.empty()) {  // nothing to evaluate but no logits kept
        reset();
        common = 0;
    }
    st.n_prompt = static_cast<int64_t>(prompt.size());
    st.n_reused = static_cast<int64_t>(common);
    const auto t0 = Clock::now();
    const size_t batch = static_cast<size_t>(std::max<int64_t>(opt.n_batch, 1));
    for (size_t i = common; i < prompt.size(); i += batch) {
        if (i > common && opt.interrupted && opt.interrupted()) {
            interrupted = true;
            break;
        }
        const auto chunk = prompt.subspan(i, std::min(batch, prompt.size() - i));
        last_logits_ = runner_.eval(chunk, false);
        cached_.insert(cached_.end(), chunk.begin(), chunk.end());
    }
    st.prompt_s = seconds_since(t0);
}

GenerateResult Generator::generate(std::span<const int32_t> prompt, Sampler& sampler, const TextSink& on_text,
                                   const GenerateOptions& opt) {
    GenerateResult res;
    bool interrupted = false;
    feed(prompt, opt, res.stats, interrupted);
    const auto t1 = Clock::now();
    sampler.reset();
    for (int32_t id : prompt) sampler.accept(id);

    StreamDecoder dec(tok_);
    StopMatcher stop(sampler.params().stop);
    bool sink_open = true;
    auto emit = [&](const std::string& s) {
        if (s.empty()) return;
        res.text += s;
        if (on_text && sink_open && !on_text(s)) sink_open = false;
    };
    const int64_t max_tokens = sampler.params().max_tokens;
    auto at_max = [&] { return max_tokens >= 0 && static_cast<int64_t>(res.ids.size()) >= max_tokens; };

    if (interrupted) {
        res.reason = StopReason::interrupted;
    } else if (at_max()) {
        res.reason = StopReason::max_tokens;
    } else {
        for (;;) {
            if (opt.interrupted && opt.interrupted()) {
                res.reason = StopReason::interrupted;
                break;
            }
            const int32_t id = sampler.sample(last_logits_);
            if (!opt.ignore_eos && is_eog(id)) {
                res.reason = StopReason::eos;
                break;
            }
            sampler.accept(id);
            res.ids.push_back(id);
            emit(stop.push(dec.push(id)));
            if (stop.stopped()) {
                res.reason = StopReason::stop_string;
                break;
            }
            if (!sink_open) {
                res.reason = StopReason::callback;
                break;
            }
            if (at_max()) {
                res.reason = StopReason::max_tokens;
                break;
            }
            if (runner_.n_past() >= n_ctx()) {
                res.reason = StopReason::context_full;
                break;
            }
            last_logits_ = runner_.eval(std::span<const int32_t>(&id, 1), false);
            cached_.push_back(id);
        }
    }
    if (!stop.stopped()) {
        emit(stop.push(dec.flush()));
        if (stop.stopped())
            res.reason = StopReason::stop_string;
        else
            emit(stop.flush());
    }
    res.stats.n_gen = static_cast<int64_t>(res.ids.size());
    res.stats.gen_s = seconds_since(t1);
    return res;
}

ChatSession::ChatSession(Generator& gen, const ChatTemplate& tmpl, int64_t reserve)
    : gen_(gen), tmpl_(tmpl), reserve_(std::clamp<int64_t>(reserve, 1, std::max<int64_t>(gen.n_ctx() / 2, 1))) {}

void ChatSession::set_system(std::string text) { system_ = std::move(text); }

std::vector<ChatMessage> ChatSession::messages() const {
    std::vector<ChatMessage> out;
    if (!system_.empty()) out.push_back({"system", system_});
    out.insert(out.end(), turns_.begin(), turns_.end());
    return out;
}

void ChatSession::set_messages(std::vector<ChatMessage> msgs) {
    system_.clear();
    size_t first = 0;
    if (!msgs.empty() && msgs[0].role == "system") {
        system_ = msgs[0].content;
        first = 1;
    }
    turns_.assign(msgs.begin() + static_cast<std::ptrdiff_t>(first), msgs.end());
}

namespace {
// The template adds BOS itself (as transformers' apply_chat_template expects), so no
// add_bos here; the role markers in the rendered text must become their tokens.
EncodeOptions prompt_encoding() { return EncodeOptions{}; }
}  // namespace

std::vector<int32_t> ChatSession::prompt_ids(const std::vector<ChatMessage>& msgs) const {
    const std::string text = tmpl_.render(msgs, true);
    const Tokenizer& tok = gen_.tokenizer();
    if (!known_ids_.empty() && gen_.cached() == known_ids_ && text.size() > known_text_.size() &&
        text.compare(0, known_text_.size(), known_text_) == 0) {
        std::vector<int32_t> ids = known_ids_;
        const std::vector<int32_t> rest = tok.encode(std::string_view(text).substr(known_text_.size()), prompt_encoding());
        ids.insert(ids.end(), rest.begin(), rest.end());
        return ids;
    }
    return tok.encode(text, prompt_encoding());
}

ChatTurn ChatSession::send(const std::string& user_text, Sampler& sampler, const TextSink& on_text,
                           const GenerateOptions& opt) {
    ChatTurn turn;
    std::vector<ChatMessage> turns = turns_;
    turns.push_back({"user", user_text});
    auto compose = [&] {
        std::vector<ChatMessage> m;
        if (!system_.empty()) m.push_back({"system", system_});
        m.insert(m.end(), turns.begin(), turns.end());
        return m;
    };
    std::vector<int32_t> ids = prompt_ids(compose());
    const int64_t n_ctx = gen_.n_ctx();
    while (static_cast<int64_t>(ids.size()) + reserve_ > n_ctx) {
        if (turns.size() <= 1)
            throw Error("chat", "the message does not fit in the context: the prompt is " + std::to_string(ids.size()) +
                                    " tokens, " + std::to_string(reserve_) + " are kept for the answer, the context is " +
                                    std::to_string(n_ctx));
        // The oldest turn: its first message and everything up to the next user message
        // (never the new message itself).
        size_t k = 1;
        while (k < turns.size() - 1 && turns[k].role != "user") ++k;
        turns.erase(turns.begin(), turns.begin() + static_cast<std::ptrdiff_t>(k));
        turn.n_dropped += static_cast<int>(k);
        ids = prompt_ids(compose());
    }
    const std::string text = tmpl_.render(compose(), true);
    turns_ = std::move(turns);
    try {
        turn.gen = gen_.generate(ids, sampler, on_text, opt);
    } catch (...) {
        turns_.pop_back();
        known_ids_.clear();
        throw;
    }
    turns_.push_back({"assistant", turn.gen.text});
    // What the cache now holds, as text: the prompt and the answer's evaluated tokens.
    const std::vector<int32_t>& cached = gen_.cached();
    if (cached.size() >= ids.size() && std::equal(ids.begin(), ids.end(), cached.begin())) {
        known_ids_ = cached;
        known_text_ = text + gen_.tokenizer().decode(std::span<const int32_t>(cached).subspan(ids.size()));
    } else {
        known_ids_.clear();
        known_text_.clear();
    }
    return turn;
}

}  // namespace ds3
