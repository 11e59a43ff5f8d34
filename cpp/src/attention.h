// Attention policies for plain (non-streaming) forward passes: a sequence attending to itself,
// and a sequence continuing over a KV cache. The StateKV policies live in cache/.
#pragma once

#include "cache/detailed_cache.h"
#include "cache/kv_cache.h"
#include "models/text_model.h"

namespace statekv {

// Causal attention of the graph's tokens over themselves (stateless logits).
class CausalSelfAttention final : public LayerAttention {
public:
    explicit CausalSelfAttention(const TextHParams& hp) : hp_(hp) {}
    ggml_tensor* attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) override;

private:
    const TextHParams& hp_;
    ggml_tensor* mask_ = nullptr;  // shared by all layers of one graph
};

// The graph's tokens occupy cache slots [n_past, n_past + n); they attend causally over the
// cache's slots [0, n_past + n). Keys and values are written to the cache in the same graph.
class KVCacheAttention final : public LayerAttention {
public:
    KVCacheAttention(const TextHParams& hp, KVCache& cache, int n_past) : hp_(hp), cache_(cache), n_past_(n_past) {}
    ggml_tensor* attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) override;

private:
    const TextHParams& hp_;
    KVCache& cache_;
    int n_past_;
    ggml_tensor* slots_ = nullptr;
};

}  // namespace statekv

namespace statekv {

// Causal attention of n_q queries (absolute token indices q0 .. q0 + n_q - 1) over keys held in
// segments of D-like storage (a key at absolute index j is visible to query i iff j <= q0 + i).
// One segment: one fused attention. Several: gathered into one K/V for one fused attention
// (float caches), or one fused attention per segment merged with the segments' log-sum-exp
// weights computed from explicit scores (quantized caches); both exact.
// q: [head_dim, n_head, n_q]. Returns [head_dim * n_head, n_q].
ggml_tensor* segmented_attention(GraphBuilder& g, ggml_tensor* q, const std::vector<KVSegment>& segments,
                                 int64_t q0, float scale);

// Attention with key scores (the StateKV step). k, v: [head_dim, n_kv, n_head_kv] (F32 or F16), the
// first n_visible keys visible to every query, the last n_q keys the queries' own (causal).
// Returns the output [head_dim * n_head, n_q] and scores [n_kv, n_head_kv]: per key, the
// softmax mass summed over queries and over the query heads of its KV group. Queries are
// processed in tiles so the probability matrix stays bounded in memory.
struct ScoredAttention {
    ggml_tensor* out;
    ggml_tensor* scores;
};
ScoredAttention scored_attention(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int64_t n_visible,
                                 float scale, size_t max_probability_bytes = size_t(256) << 20);

}  // namespace statekv
