#include "memory/kv_store.h"

#include "ggml-alloc.h"
#include "statekv/statekv.h"

namespace statekv {

ggml_type parse_kv_type(const std::string& name) {
    if (name == "f32") return GGML_TYPE_F32;
    if (name == "f16") return GGML_TYPE_F16;
    if (name == "q8_0") return GGML_TYPE_Q8_0;
    if (name == "q4_0") return GGML_TYPE_Q4_0;
    throw InputError("unknown kv_type '" + name + "' (expected f32, f16, q8_0 or q4_0)");
}

void check_kv_type(const KVShape& shape, ggml_type type) {
    if (shape.head_dim % ggml_blck_size(type) != 0) {
        throw InputError(std::string("kv_type ") + ggml_type_name(type) + " needs head_dim to be a multiple of " +
                         std::to_string(ggml_blck_size(type)) + "; the model has head_dim " + std::to_string(shape.head_dim));
    }
}

KVStore::KVStore(const KVShape& shape, const Backend& backend, ggml_type type, int capacity, Layout layout,
                 bool with_ids, bool clear, const std::string& what, const std::vector<bool>& held, bool with_scores)
    : shape_(shape), capacity_(capacity) {
    if (capacity <= 0) throw InputError("a K/V store needs a positive capacity, got " + std::to_string(capacity));
    if (with_scores && layout != Layout::HeadMajor) throw std::logic_error("KVStore: scores need the head-major layout");
    check_kv_type(shape, type);
    ggml_init_params ip{ggml_tensor_overhead() * (4 * size_t(shape.n_layer) + 1), nullptr, true};
    ctx_ = ggml_init(ip);
    int n_held = 0;
    for (int il = 0; il < shape.n_layer; ++il) {
        if (!held.empty() && !held[static_cast<size_t>(il)]) {
            k_.push_back(nullptr);
            v_.push_back(nullptr);
            if (with_ids) ids_.push_back(nullptr);
            if (with_scores) scores_.push_back(nullptr);
            continue;
        }
        ++n_held;
        if (layout == Layout::TokenMajor) {
            k_.push_back(ggml_new_tensor_2d(ctx_, type, shape.row(), capacity));
            v_.push_back(ggml_new_tensor_2d(ctx_, type, shape.row(), capacity));
        } else {
            k_.push_back(ggml_new_tensor_3d(ctx_, type, shape.head_dim, capacity, shape.n_head_kv));
            v_.push_back(ggml_new_tensor_3d(ctx_, type, shape.head_dim, capacity, shape.n_head_kv));
        }
        if (with_ids) ids_.push_back(ggml_new_tensor_3d(ctx_, GGML_TYPE_F32, 1, capacity, shape.n_head_kv));
        if (with_scores) scores_.push_back(ggml_new_tensor_3d(ctx_, GGML_TYPE_F32, 1, capacity, shape.n_head_kv));
    }
    if (n_held == 0) return;  // nothing to store (every layer held elsewhere)
    buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_, backend.default_buffer_type());
    if (!buffer_) {
        ggml_free(ctx_);
        throw InputError("out of memory allocating " + what);
    }
    if (clear) ggml_backend_buffer_clear(buffer_, 0);
}

KVStore::~KVStore() {
    if (buffer_) ggml_backend_buffer_free(buffer_);
    if (ctx_) ggml_free(ctx_);
}

size_t KVStore::bytes() const { return buffer_ ? ggml_backend_buffer_get_size(buffer_) : 0; }

std::pair<ggml_tensor*, ggml_tensor*> KVStore::write(ggml_context* ctx, int layer, ggml_tensor* k, ggml_tensor* v,
                                                     ggml_tensor* slots) const {
    const int64_t n = k->ne[2];
    ggml_tensor* ks = ggml_set_rows(ctx, k_[layer], ggml_reshape_2d(ctx, k, shape_.row(), n), slots);
    ggml_tensor* vs = ggml_set_rows(ctx, v_[layer], ggml_reshape_2d(ctx, v, shape_.row(), n), slots);
    return {ks, vs};
}

ggml_tensor* KVStore::view(ggml_context* ctx, ggml_tensor* src, int64_t first, int64_t n) const {
    return ggml_view_3d(ctx, src, shape_.head_dim, n, shape_.n_head_kv, src->nb[1], ggml_row_size(src->type, shape_.head_dim),
                        static_cast<size_t>(first) * src->nb[1]);
}

KVSegment KVStore::write_and_view(ggml_context* ctx, int layer, ggml_tensor* k, ggml_tensor* v, ggml_tensor* slots,
                                  int64_t n_valid, int64_t begin) const {
    const auto [ks, vs] = write(ctx, layer, k, v, slots);
    KVSegment s;
    s.begin = begin;
    s.n = n_valid;
    s.k = view(ctx, ks, 0, n_valid);
    s.v = view(ctx, vs, 0, n_valid);
    return s;
}

}  // namespace statekv
