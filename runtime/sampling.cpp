// Sampling chain and stop strings (see sampling.h for the order and the PRNG contract).
#include "runtime/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

namespace ds3 {

SamplingParams sampling_defaults(const gguf::File& f) {
    SamplingParams p;
    p.temperature = static_cast<float>(f.get_f64("ds3.generation.temperature", p.temperature));
    p.top_p = static_cast<float>(f.get_f64("ds3.generation.top_p", p.top_p));
    p.top_k = static_cast<int32_t>(f.get_u64("ds3.generation.top_k", static_cast<uint64_t>(p.top_k)));
    return p;
}

void validate(const SamplingParams& p) {
    auto fail = [](const std::string& m) { throw Error("sampling", m); };
    if (!std::isfinite(p.temperature)) fail("temperature must be finite");
    if (p.top_k < 0) fail("top_k must be >= 0, found " + std::to_string(p.top_k));
    if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) fail("top_p must be in (0, 1], found " + std::to_string(p.top_p));
    if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) fail("min_p must be in [0, 1], found " + std::to_string(p.min_p));
    if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty))
        fail("repetition_penalty must be > 0, found " + std::to_string(p.repetition_penalty));
    if (!std::isfinite(p.presence_penalty) || !std::isfinite(p.frequency_penalty))
        fail("presence/frequency penalties must be finite");
    if (p.penalty_last_n < -1) fail("penalty_last_n must be >= -1, found " + std::to_string(p.penalty_last_n));
    for (const auto& s : p.stop)
        if (s.empty()) fail("stop strings must not be empty");
}

Sampler::Sampler(SamplingParams p) : p_(std::move(p)), rng_(p_.seed) { validate(p_); }

double Sampler::uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

void Sampler::accept(int32_t id) {
    history_.push_back(id);
    if (p_.penalty_last_n >= 0)
        while (history_.size() > static_cast<size_t>(p_.penalty_last_n)) history_.pop_front();
}

void Sampler::reset() {
    history_.clear();
    rng_.seed(p_.seed);
}

int32_t Sampler::sample(std::span<const float> logits_in) {
    if (logits_in.empty()) throw Error("sampling", "empty logits");
    const size_t n = logits_in.size();
    std::vector<float> logits(logits_in.begin(), logits_in.end());

    bool penalties = p_.repetition_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f;
    if (penalties && !history_.empty()) {
        std::unordered_map<int32_t, int> counts;
        for (int32_t id : history_)
            if (id >= 0 && static_cast<size_t>(id) < n) ++counts[id];
        for (auto [id, c] : counts) {
            float& l = logits[id];
            if (p_.repetition_penalty != 1.0f) l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
            l -= p_.presence_penalty + p_.frequency_penalty * static_cast<float>(c);
        }
    }

    // NaN logits never win; all-NaN is an error (a broken forward pass, not a choice).
    auto better = [&](int32_t a, int32_t b) {
        float la = logits[a], lb = logits[b];
        if (la != lb) return la > lb;
        return a < b;
    };
    std::vector<int32_t> cand;
    cand.reserve(n);
    for (size_t i = 0; i < n; ++i)
        if (!std::isnan(logits[i])) cand.push_back(static_cast<int32_t>(i));
    if (cand.empty()) throw Error("sampling", "all " + std::to_string(n) + " logits are NaN");

    if (p_.temperature <= 0.0f) return *std::min_element(cand.begin(), cand.end(), better);

    for (int32_t id : cand) logits[id] /= p_.temperature;
    size_t keep = cand.size();
    if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < keep) {
        keep = static_cast<size_t>(p_.top_k);
        std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), better);
        cand.resize(keep);
    } else {
        std::sort(cand.begin(), cand.end(), better);
    }
    // Softmax over the survivors, in double for stable cumulative sums.
    float maxl = logits[cand[0]];
    std::vector<double> prob(cand.size());
    double sum = 0;
    for (size_t i = 0; i < cand.size(); ++i) {
        prob[i] = std::isinf(maxl) && maxl > 0 ? (logits[cand[i]] == maxl ? 1.0 : 0.0)
                                                : std::exp(static_cast<double>(logits[cand[i]] - maxl));
        sum += prob[i];
    }
    for (double& q : prob) q /= sum;
    if (p_.top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
        double cum = 0;
        size_t k = 0;
        while (k < prob.size()) {
            cum += prob[k++];
            if (cum >= p_.top_p) break;
        }
        keep = std::max<size_t>(k, 1);
        cand.resize(keep);
        prob.resize(keep);
    }
    if (p_.min_p > 0.0f) {
        double floor = prob[0] * p_.min_p;
        size_t k = 1;
        while (k < prob.size() && prob[k] >= floor) ++k;
        cand.resize(k);
        prob.resize(k);
    }
    double total = std::accumulate(prob.begin(), prob.end(), 0.0);
    double r = uniform(rng_) * total;
    for (size_t i = 0; i < cand.size(); ++i) {
        r -= prob[i];
        if (r < 0) return cand[i];
    }
    return cand.back();  // rounding left r a hair above zero
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
    std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

std::string StopMatcher::push(std::string_view text) {
    if (stopped_) return {};
    pending_ += text;
    // Earliest complete stop string wins.
    size_t best = std::string::npos;
    for (const auto& s : stops_) best = std::min(best, pending_.find(s));
    if (best != std::string::npos) {
        stopped_ = true;
        std::string out = pending_.substr(0, best);
        pending_.clear();
        return out;
    }
    // Hold back the longest suffix that is a proper prefix of some stop string.
    size_t hold = 0;
    for (const auto& s : stops_)
        for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len)
            if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
                hold = len;
                break;
            }
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
}

std::string StopMatcher::flush() {
    std::string out;
    if (!stopped_) out.swap(pending_);
    pending_.clear();
    return out;
}

}  // namespace ds3
