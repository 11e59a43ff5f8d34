// A contiguous per-layer key/value cache of fixed capacity, used by Model::generate and the
// prompt benchmark: token slot i holds the keys/values of the i-th token of the sequence.
#pragma once

#include <string>
#include <vector>

#include "../backend.h"
#include "../graph.h"
#include "../models/text_model.h"

namespace statekv {

// "f32" | "f16" | "q8_0" | "q4_0" -> ggml type; InputError otherwise.
ggml_type parse_kv_type(const std::string& name);

class KVCache {
public:
    KVCache(const TextHParams& hp, const Backend& backend, int capacity, ggml_type type);
    ~KVCache();
    KVCache(const KVCache&) = delete;
    KVCache& operator=(const KVCache&) = delete;

    int capacity() const { return capacity_; }
    ggml_tensor* keys(int layer) const { return k_[layer]; }      // [head_dim * n_head_kv, capacity]
    ggml_tensor* values(int layer) const { return v_[layer]; }
    size_t bytes() const;

    // In-graph write of a batch's keys/values k, v [head_dim, n_head_kv, n] into `slots`, then
    // the view of slots [0, n_valid) read through that write (so it is ordered after it), as a
    // segment whose first key has absolute index `begin`.
    KVSegment write_and_view(ggml_context* ctx, int layer, ggml_tensor* k, ggml_tensor* v, ggml_tensor* slots,
                             int64_t n_valid, int64_t begin);

private:
    int capacity_;
    ggml_context* ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::vector<ggml_tensor*> k_, v_;
};

}  // namespace statekv
