#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

namespace statekv {

void validate_sampling(const SamplingOptions& o) {
    if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature)) throw InputError("temperature must be finite and >= 0");
    if (o.top_k < 0) throw InputError("top_k must be >= 0 (0 = off)");
    if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) throw InputError("top_p must be in (0, 1]");
    if (!(o.min_p >= 0.0f && o.min_p <= 1.0f)) throw InputError("min_p must be in [0, 1]");
    if (!(o.repeat_penalty > 0.0f) || !std::isfinite(o.repeat_penalty)) throw InputError("repeat_penalty must be finite and > 0");
    if (o.repeat_last_n < 0) throw InputError("repeat_last_n must be >= 0");
}

Sampler::Sampler(const SamplingOptions& options) : o_(options), rng_(options.seed) { validate_sampling(options); }

int32_t Sampler::sample(std::vector<float>& logits, const std::vector<int32_t>& history) {
    const int n = static_cast<int>(logits.size());
    if (o_.repeat_penalty != 1.0f && o_.repeat_last_n > 0) {
        // CTRL-style penalty on the distinct tokens of the recent history.
        const size_t from = history.size() > size_t(o_.repeat_last_n) ? history.size() - o_.repeat_last_n : 0;
        std::set<int32_t> seen(history.begin() + from, history.end());
        for (int32_t t : seen) {
            if (t < 0 || t >= n) continue;
            logits[t] = logits[t] > 0 ? logits[t] / o_.repeat_penalty : logits[t] * o_.repeat_penalty;
        }
    }
    if (o_.temperature <= 0.0f) return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());

    std::vector<int32_t> ids(n);
    std::iota(ids.begin(), ids.end(), 0);
    // Candidates sorted by logit, descending (ties: lower id first, for reproducibility).
    auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    size_t keep = n;
    if (o_.top_k > 0 && size_t(o_.top_k) < keep) {
        keep = o_.top_k;
        std::partial_sort(ids.begin(), ids.begin() + keep, ids.end(), by_logit);
    } else {
        std::sort(ids.begin(), ids.end(), by_logit);
    }
    ids.resize(keep);
    // Probabilities at temperature 1 for top-p / min-p, as llama.cpp's chain does.
    auto probs = [&](const std::vector<int32_t>& c, float temp) {
        std::vector<double> p(c.size());
        const double mx = logits[c[0]];
        double sum = 0;
        for (size_t i = 0; i < c.size(); ++i) sum += p[i] = std::exp((logits[c[i]] - mx) / temp);
        for (double& x : p) x /= sum;
        return p;
    };
    if (o_.top_p < 1.0f) {
        const auto p = probs(ids, 1.0f);
        double cum = 0;
        size_t k = 0;
        while (k < ids.size()) {
            cum += p[k++];
            if (cum >= o_.top_p) break;
        }
        ids.resize(std::max<size_t>(1, k));
    }
    if (o_.min_p > 0.0f) {
        const auto p = probs(ids, 1.0f);
        size_t k = 0;
        while (k < ids.size() && p[k] >= o_.min_p * p[0]) ++k;
        ids.resize(std::max<size_t>(1, k));
    }
    const auto p = probs(ids, o_.temperature);
    std::discrete_distribution<size_t> dist(p.begin(), p.end());
    return ids[dist(rng_)];
}

}  // namespace statekv
