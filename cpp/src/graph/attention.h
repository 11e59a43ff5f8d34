// Attention as the decoder sees it: the LayerAttention interface (what one layer's queries
// attend to is decided by its implementation: the sequence itself here, a KV cache or a cache
// policy in memory/), views of stored keys/values (KVSegment), the one mask builder, and the
// fused attentions over such views. Nothing here knows a cache type.
#pragma once

#include <cstdint>
#include <vector>

#include "graph/builder.h"
#include "graph/ops.h"

namespace statekv {

// Keys/values of a contiguous run of tokens, as views in fused-attention layout
// [head_dim, n, n_head_kv] (any strides).
struct KVSegment {
    ggml_tensor* k = nullptr;
    ggml_tensor* v = nullptr;
    int64_t begin = 0;  // absolute index of the first key
    int64_t n = 0;
};

// Attention of one layer for the tokens of the current graph.
class LayerAttention {
public:
    virtual ~LayerAttention() = default;
    // q: [head_dim, n_head, n_tokens]; k, v: [head_dim, n_head_kv, n_tokens], RoPE applied.
    // Returns [head_dim * n_head, n_tokens].
    virtual ggml_tensor* attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) = 0;
};

// A run of keys in an attention's key order: its key t has absolute index begin + t.
struct KeyRun {
    int64_t begin = 0;
    int64_t n = 0;
};

// Whether the key at absolute token index `key` is visible to the query at index `query`:
// causal, and within the last `window` tokens (the query itself included) when window > 0.
inline bool key_visible(int64_t key, int64_t query, int64_t window) {
    return key <= query && (window <= 0 || query - key < window);
}

// The one mask builder: an F16 graph input [n_kv, n_q] for keys laid out as `keys`, where query i
// (absolute index q0 + i) sees a key iff key_visible(key index, q0 + i, window), or, when the graph's
// batch has bidirectional blocks (GraphBuilder::batch_blocks; its first token has index
// `batch_first`, -1: q0), the key is in the query's block and within the window. Hidden entries get
// -inf, or -65504 with `finite` (rows that see nothing of a segment stay NaN-free when segments
// are merged by log-sum-exp). Built and uploaded once per graph for each distinct argument set,
// whatever the number of layers asking. With `null_if_all_visible`, nullptr when nothing is hidden.
ggml_tensor* causal_mask(GraphBuilder& g, const std::vector<KeyRun>& keys, int64_t q0, int64_t n_q,
                         bool finite = false, bool null_if_all_visible = false, int64_t window = 0,
                         int64_t batch_first = -1);

// Fused attention of q [d, n_head, n_q] over k, v [d, n_kv, n_head_kv] (any strides) with an F16
// mask [n_kv, n_q] (0 or -inf; nullptr: every key visible). Returns [d * n_head, n_q]. ggml's
// flash attention, except on the CPU for the rows past the last multiple of its 64-row tile: its
// tiled kernel pays a whole tile for them (a 263-token frame step: 5 tiles per head where 256
// rows need 4) and its per-row kernel rounds to f16, so they go to statekv's f32 kernel
// (graph/key_mass.h) and the two outputs are joined (docs/performance.md section 10).
ggml_tensor* fused_attention(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, ggml_tensor* mask,
                             float scale);

// Causal attention of the graph's tokens over themselves (stateless logits).
class CausalSelfAttention final : public LayerAttention {
public:
    // windows: sliding window per layer (0 or empty: none).
    explicit CausalSelfAttention(float scale, std::vector<int> windows = {}) : scale_(scale), windows_(std::move(windows)) {}
    ggml_tensor* attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) override;

private:
    float scale_;
    std::vector<int> windows_;
};

// Causal attention of n_q queries (absolute token indices q0 .. q0 + n_q - 1) over keys held in
// segments of D-like storage (a key at absolute index j is visible to query i iff j <= q0 + i).
// One segment: one fused attention. Several: gathered into one K/V for one fused attention
// (float caches), or one fused attention per segment merged with the segments' log-sum-exp
// weights computed from explicit scores (quantized caches); both exact.
// q: [head_dim, n_head, n_q]. Returns [head_dim * n_head, n_q]. window > 0: a sliding-window layer
// (query i also sees only keys j > q0 + i - window).
ggml_tensor* segmented_attention(GraphBuilder& g, ggml_tensor* q, const std::vector<KVSegment>& segments,
                                 int64_t q0, float scale, int64_t window = 0);

// Attention with key scores (the StateKV step). k, v: [head_dim, n_kv, n_head_kv] (F32 or F16), the
// first n_visible keys visible to every query, the last n_q keys the queries' own (causal).
// Returns the output [head_dim * n_head, n_q] and scores [n_kv, n_head_kv]: per key, the
// softmax mass summed over queries and over the query heads of its KV group. On the CPU backend
// the scores come from statekv's kernel (graph/key_mass.h), which keeps no probability matrix;
// elsewhere from ggml's ops, the queries in tiles so that the matrix stays bounded in memory.
struct ScoredAttention {
    ggml_tensor* out;
    ggml_tensor* scores;
};
ScoredAttention scored_attention(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int64_t n_visible,
                                 float scale, size_t max_probability_bytes = size_t(256) << 20);

}  // namespace statekv
