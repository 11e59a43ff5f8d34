// Attention policies for plain (non-streaming) forward passes: a sequence attending to itself,
// and a sequence continuing over a KV cache. The StateKV policies live in cache/.
#pragma once

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
    ggml_tensor* mask_ = nullptr;
    ggml_tensor* slots_ = nullptr;
};

// View of slots [0, n) of a per-layer cache tensor [head_dim * n_head_kv, capacity] as
// [head_dim, n, n_head_kv], the layout fused attention reads.
ggml_tensor* kv_view(ggml_context* ctx, ggml_tensor* cache, int head_dim, int n_head_kv, int n);

}  // namespace statekv
