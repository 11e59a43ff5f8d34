#include "attention.h"

#include <cmath>
#include <numeric>

namespace statekv {

ggml_tensor* kv_view(ggml_context* ctx, ggml_tensor* cache, int head_dim, int n_head_kv, int n) {
    return ggml_view_3d(ctx, cache, head_dim, n, n_head_kv, cache->nb[1], ggml_row_size(cache->type, head_dim), 0);
}

ggml_tensor* CausalSelfAttention::attend(GraphBuilder& g, int, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) {
    const int n = static_cast<int>(q->ne[2]);
    if (!mask_) {
        std::vector<uint16_t> m = causal_mask_f16(n, n, 0);
        mask_ = g.input(GGML_TYPE_F16, {n, n}, m.data(), "causal_mask");
    }
    ggml_context* ctx = g.ctx();
    ggml_tensor* kp = ggml_permute(ctx, k, 0, 2, 1, 3);
    ggml_tensor* vp = ggml_permute(ctx, v, 0, 2, 1, 3);
    return flash_attention(ctx, q, kp, vp, mask_, 1.0f / std::sqrt(static_cast<float>(hp_.head_dim)));
}

ggml_tensor* KVCacheAttention::attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) {
    ggml_context* ctx = g.ctx();
    const int n = static_cast<int>(q->ne[2]);
    const int n_kv = n_past_ + n;
    if (!mask_) {
        std::vector<uint16_t> m = causal_mask_f16(n_kv, n, n_past_);
        mask_ = g.input(GGML_TYPE_F16, {n_kv, n}, m.data(), "kv_mask");
        std::vector<int32_t> slots(n);
        std::iota(slots.begin(), slots.end(), n_past_);
        slots_ = g.input_i32(slots, "kv_slots");
    }
    const int64_t row = int64_t(hp_.head_dim) * hp_.n_head_kv;
    // Reading through the set_rows result orders the read after the write.
    ggml_tensor* ks = ggml_set_rows(ctx, cache_.keys(layer), ggml_reshape_2d(ctx, k, row, n), slots_);
    ggml_tensor* vs = ggml_set_rows(ctx, cache_.values(layer), ggml_reshape_2d(ctx, v, row, n), slots_);
    ggml_tensor* kall = kv_view(ctx, ks, hp_.head_dim, hp_.n_head_kv, n_kv);
    ggml_tensor* vall = kv_view(ctx, vs, hp_.head_dim, hp_.n_head_kv, n_kv);
    return flash_attention(ctx, q, kall, vall, mask_, 1.0f / std::sqrt(static_cast<float>(hp_.head_dim)));
}

}  // namespace statekv
