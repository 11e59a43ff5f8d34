// Token sampling: repetition penalty, top-k, top-p, min-p, temperature, seeded; greedy at
// temperature 0. The order follows llama.cpp's default sampler chain.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "statekv/statekv.h"

namespace statekv {

class Sampler {
public:
    explicit Sampler(const SamplingOptions& options);
    // logits: n_vocab values (modified in place); history: tokens the penalty looks at.
    int32_t sample(std::vector<float>& logits, const std::vector<int32_t>& history);

private:
    SamplingOptions o_;
    std::mt19937_64 rng_;
};

// Checks option ranges; InputError otherwise.
void validate_sampling(const SamplingOptions& o);

}  // namespace statekv
