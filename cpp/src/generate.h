// The one decode loop (Model::generate and Session::generate), and the token-batch helpers both
// prompt paths use.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <vector>

#include "sampling.h"
#include "statekv/statekv.h"

namespace statekv {

// Tokens [b, e) of a batch: ids, positions on every axis, and the embeddings of the rows inside it.
Tokens slice_tokens(const Tokens& in, int b, int e);

// The ids that end generation: `extra`, plus the model's end-of-turn ids unless ignore_eos.
std::set<int32_t> stop_tokens(const std::vector<int32_t>& end_of_turn, const std::vector<int32_t>& extra, bool ignore_eos);

// Logits of the token after `token` (the index-th generated token), computed over the cache.
using NextLogits = std::function<std::vector<float>(int32_t token, int index)>;

// From the logits of the prompt's last token: picks a token with `sampler` (history: the tokens
// its repetition penalty looks at, extended with every pick), reports it to on_token, and stops at
// a stop token (included), when on_token returns false, or after max_tokens; otherwise asks
// `next` for the following logits. Returns the tokens picked.
std::vector<int32_t> decode(std::vector<float> logits, int max_tokens, Sampler& sampler, std::vector<int32_t> history,
                            const std::set<int32_t>& stop, const TokenCallback& on_token, const NextLogits& next);

}  // namespace statekv
