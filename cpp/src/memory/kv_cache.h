// The plain KV cache (Model::generate, the prompt benchmark, the question tail of a session):
// slot i holds the keys/values of the i-th token of a sequence. And the attention of a batch
// that continues such a sequence.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "memory/kv_store.h"

namespace statekv {

class KVCache final : public KVStore {
public:
    KVCache(const KVShape& shape, const Backend& backend, int capacity, ggml_type type)
        : KVStore(shape, backend, type, capacity, Layout::TokenMajor, /*with_ids*/ false, /*clear*/ true,
                  "a KV cache of " + std::to_string(capacity) + " tokens") {}
};

// The graph's tokens occupy cache slots [n_past, n_past + n); they attend causally over the
// cache's slots [0, n_past + n), whose keys have absolute indices from `begin`, after the keys
// `earlier` gives for the layer (absolute indices below `begin`, e.g. views of the detailed
// cache). Keys and values are written to the cache in the same graph.
class KVCacheAttention final : public LayerAttention {
public:
    using Earlier = std::function<std::vector<KVSegment>(GraphBuilder& g, int layer)>;
    KVCacheAttention(const KVStore& cache, float scale, int n_past, int64_t begin = 0, Earlier earlier = nullptr)
        : cache_(cache), scale_(scale), n_past_(n_past), begin_(begin), earlier_(std::move(earlier)) {}
    ggml_tensor* attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) override;

private:
    const KVStore& cache_;
    float scale_;
    int n_past_;
    int64_t begin_;
    Earlier earlier_;
    ggml_tensor* slots_ = nullptr;  // shared by all layers of one graph
};

}  // namespace statekv
