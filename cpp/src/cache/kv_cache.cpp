#include "kv_cache.h"

#include "ggml-alloc.h"

namespace statekv {

ggml_type parse_kv_type(const std::string& name) {
    if (name == "f32") return GGML_TYPE_F32;
    if (name == "f16") return GGML_TYPE_F16;
    if (name == "q8_0") return GGML_TYPE_Q8_0;
    if (name == "q4_0") return GGML_TYPE_Q4_0;
    throw InputError("unknown kv_type '" + name + "' (expected f32, f16, q8_0 or q4_0)");
}

KVCache::KVCache(const TextHParams& hp, const Backend& backend, int capacity, ggml_type type) : capacity_(capacity) {
    if (capacity <= 0) throw InputError("KV cache capacity must be positive");
    if (hp.head_dim % ggml_blck_size(type) != 0) {
        throw InputError(std::string("kv_type ") + ggml_type_name(type) + " needs head_dim to be a multiple of " +
                         std::to_string(ggml_blck_size(type)) + ", the model has head_dim " + std::to_string(hp.head_dim));
    }
    ggml_init_params ip{ggml_tensor_overhead() * (2 * hp.n_layer + 1), nullptr, true};
    ctx_ = ggml_init(ip);
    for (int il = 0; il < hp.n_layer; ++il) {
        k_.push_back(ggml_new_tensor_2d(ctx_, type, int64_t(hp.head_dim) * hp.n_head_kv, capacity));
        v_.push_back(ggml_new_tensor_2d(ctx_, type, int64_t(hp.head_dim) * hp.n_head_kv, capacity));
    }
    buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_, backend.default_buffer_type());
    if (!buffer_) {
        ggml_free(ctx_);
        throw InputError("out of memory allocating a KV cache of " + std::to_string(capacity) + " tokens");
    }
    ggml_backend_buffer_clear(buffer_, 0);
}

KVCache::~KVCache() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (ctx_) ggml_free(ctx_);
}

size_t KVCache::bytes() const { return ggml_backend_buffer_get_size(buffer_); }

KVSegment KVCache::write_and_view(ggml_context* ctx, int layer, ggml_tensor* k, ggml_tensor* v, ggml_tensor* slots,
                                  int64_t n_valid, int64_t begin) {
    const int64_t head_dim = k->ne[0], n_head_kv = k->ne[1], n = k->ne[2];
    ggml_tensor* ks = ggml_set_rows(ctx, k_[layer], ggml_reshape_2d(ctx, k, head_dim * n_head_kv, n), slots);
    ggml_tensor* vs = ggml_set_rows(ctx, v_[layer], ggml_reshape_2d(ctx, v, head_dim * n_head_kv, n), slots);
    KVSegment s;
    s.begin = begin;
    s.n = n_valid;
    s.k = ggml_view_3d(ctx, ks, head_dim, n_valid, n_head_kv, ks->nb[1], ggml_row_size(ks->type, head_dim), 0);
    s.v = ggml_view_3d(ctx, vs, head_dim, n_valid, n_head_kv, vs->nb[1], ggml_row_size(vs->type, head_dim), 0);
    return s;
}

}  // namespace statekv
