// Key/value storage: the shape of a decoder's keys and values as the caches see it, and the one
// allocator of K/V memory, used by the plain KV cache, the question tail, the chunks of the
// detailed cache and the carried state alike.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "backend.h"
#include "graph/attention.h"

namespace statekv {

// What the caches need to know of a decoder (the text model fills it): no more.
struct KVShape {
    int n_layer = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    float attn_scale = 0.0f;   // softmax scale; 0: 1 / sqrt(head_dim)
    // Sliding windows per layer (0: the layer sees every earlier token); empty: none.
    std::vector<int> windows;
    // Values of one token's keys (or values) in one layer.
    int64_t row() const { return int64_t(head_dim) * n_head_kv; }
    // The attention scale (1 / sqrt(head_dim) unless the family says otherwise).
    float scale() const { return attn_scale > 0.0f ? attn_scale : 1.0f / std::sqrt(static_cast<float>(head_dim)); }
    int window(int layer) const { return windows.empty() ? 0 : windows[static_cast<size_t>(layer)]; }
    // The most earlier tokens any sliding-window layer still sees (w - 1 for the widest window).
    int window_keep() const {
        int keep = 0;
        for (int w : windows) keep = std::max(keep, w - 1);
        return keep;
    }
    // Layers that see every earlier token (sliding == false) or only their window (true).
    std::vector<bool> layers(bool sliding) const {
        std::vector<bool> out(static_cast<size_t>(n_layer));
        for (int il = 0; il < n_layer; ++il) out[static_cast<size_t>(il)] = (window(il) > 0) == sliding;
        return out;
    }
};

// "f32" | "f16" | "q8_0" | "q4_0" -> ggml type; InputError otherwise.
ggml_type parse_kv_type(const std::string& name);

// InputError when `type` cannot hold rows of this shape (quantized blocks must tile head_dim).
void check_kv_type(const KVShape& shape, ggml_type type);

// Per layer, the keys and values of `capacity` tokens, all in one device buffer.
// Token-major: [head_dim * n_head_kv, capacity], a token's row contiguous (caches written a batch
// of tokens at a time). Head-major: [head_dim, capacity, n_head_kv] (the carried state, selected
// per head), optionally with an F32 entry index per slot and head, [1, capacity, n_head_kv], and an
// F32 score per slot and head of the same shape (a selection rule that accumulates scores).
class KVStore {
public:
    enum class Layout { TokenMajor, HeadMajor };
    // `what` completes "out of memory allocating ..." when the device has no room. `clear`: zero
    // the buffer (slots that are read before they are written). `held`: the layers stored (empty:
    // all); the others have no tensors (k(), v(), ids(), scores() give null). `with_scores`:
    // head-major only.
    KVStore(const KVShape& shape, const Backend& backend, ggml_type type, int capacity, Layout layout, bool with_ids,
            bool clear, const std::string& what, const std::vector<bool>& held = {}, bool with_scores = false);
    ~KVStore();
    KVStore(const KVStore&) = delete;
    KVStore& operator=(const KVStore&) = delete;

    ggml_tensor* k(int layer) const { return k_[layer]; }
    ggml_tensor* v(int layer) const { return v_[layer]; }
    ggml_tensor* ids(int layer) const { return ids_.empty() ? nullptr : ids_[layer]; }
    ggml_tensor* scores(int layer) const { return scores_.empty() ? nullptr : scores_[layer]; }
    bool holds(int layer) const { return k_[layer] != nullptr; }
    int capacity() const { return capacity_; }
    size_t bytes() const;

    // Token-major: in-graph write of a batch's keys/values k, v [head_dim, n_head_kv, n] into
    // `slots`; returns the written K and V, through which later reads are ordered after the write.
    std::pair<ggml_tensor*, ggml_tensor*> write(ggml_context* ctx, int layer, ggml_tensor* k, ggml_tensor* v,
                                                ggml_tensor* slots) const;
    // Token-major: slots [first, first + n) of K or V of one layer (or of their write) as a
    // fused-attention view [head_dim, n, n_head_kv].
    ggml_tensor* view(ggml_context* ctx, ggml_tensor* src, int64_t first, int64_t n) const;
    // Token-major: write, then the view of slots [0, n_valid) read through that write, as a
    // segment whose first key has absolute index `begin`.
    KVSegment write_and_view(ggml_context* ctx, int layer, ggml_tensor* k, ggml_tensor* v, ggml_tensor* slots,
                             int64_t n_valid, int64_t begin) const;

    const KVShape& shape() const { return shape_; }

private:
    KVShape shape_;
    int capacity_;
    ggml_context* ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    std::vector<ggml_tensor*> k_, v_, ids_, scores_;
};

}  // namespace statekv
