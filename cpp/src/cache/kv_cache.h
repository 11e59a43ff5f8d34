// A contiguous per-layer key/value cache of fixed capacity, used by Model::generate and the
// prompt benchmark: token slot i holds the keys/values of the i-th token of the sequence.
#pragma once

#include <string>
#include <vector>

#include "../backend.h"
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

private:
    int capacity_;
    ggml_context* ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::vector<ggml_tensor*> k_, v_;
};

}  // namespace statekv
