#include "graph.h"

#include <cmath>
#include <stdexcept>

#include "ggml-backend.h"

namespace statekv {

GraphBuilder::GraphBuilder(size_t max_nodes) {
    ggml_init_params ip{ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false),
                        nullptr, true};
    ctx_ = ggml_init(ip);
    gf_ = ggml_new_graph_custom(ctx_, max_nodes, false);
}

GraphBuilder::~GraphBuilder() { ggml_free(ctx_); }

ggml_tensor* GraphBuilder::input(ggml_type type, std::vector<int64_t> shape, const void* bytes, const char* name) {
    ggml_tensor* t = ggml_new_tensor(ctx_, type, static_cast<int>(shape.size()), shape.data());
    ggml_set_name(t, name);
    ggml_set_input(t);
    PendingInput p{t, std::vector<uint8_t>(ggml_nbytes(t))};
    std::memcpy(p.bytes.data(), bytes, p.bytes.size());
    inputs_.push_back(std::move(p));
    return t;
}

ggml_tensor* GraphBuilder::shared_input(const std::string& key, const std::function<ggml_tensor*()>& make) {
    auto it = shared_.find(key);
    if (it != shared_.end()) return it->second;
    return shared_[key] = make();
}

ggml_tensor* GraphBuilder::input_i32(const std::vector<int32_t>& v, const char* name) {
    return input(GGML_TYPE_I32, {static_cast<int64_t>(v.size())}, v.data(), name);
}

ggml_tensor* GraphBuilder::input_f32(const std::vector<float>& v, std::vector<int64_t> shape, const char* name) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    if (n != static_cast<int64_t>(v.size())) throw std::logic_error("input_f32: size does not match shape");
    return input(GGML_TYPE_F32, std::move(shape), v.data(), name);
}

void GraphBuilder::upload_inputs() {
    for (auto& p : inputs_) {
        // An input no computed node reads is never allocated: nothing to upload.
        if (p.tensor->buffer) ggml_backend_tensor_set(p.tensor, p.bytes.data(), 0, p.bytes.size());
    }
}

void GraphBuilder::set_input(ggml_tensor* input, const void* bytes) {
    for (auto& p : inputs_) {
        if (p.tensor == input) {
            std::memcpy(p.bytes.data(), bytes, p.bytes.size());
            return;
        }
    }
    throw std::logic_error("set_input: not an input of this graph");
}

ggml_tensor* rope(ggml_context* ctx, ggml_tensor* x, ggml_tensor* positions, const RopeSpec& s) {
    if (s.multi_axis()) {
        int sections[GGML_MROPE_SECTIONS] = {s.sections[0], s.sections[1], s.sections[2], s.sections[3]};
        return ggml_rope_multi(ctx, x, positions, nullptr, s.n_dims, sections, s.mode, s.n_ctx_orig,
                               s.freq_base, s.freq_scale, 0.0f, 1.0f, 0.0f, 0.0f);
    }
    return ggml_rope_ext(ctx, x, positions, nullptr, s.n_dims, s.mode, s.n_ctx_orig, s.freq_base,
                         s.freq_scale, 0.0f, 1.0f, 0.0f, 0.0f);
}

ggml_tensor* rms_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* weight, float eps) {
    ggml_tensor* y = ggml_rms_norm(ctx, x, eps);
    return weight ? ggml_mul(ctx, y, weight) : y;
}

ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b) {
    ggml_tensor* y = ggml_mul_mat(ctx, w, x);
    return b ? ggml_add(ctx, y, b) : y;
}

ggml_tensor* swiglu_ffn(ggml_context* ctx, ggml_tensor* x, ggml_tensor* gate, ggml_tensor* up, ggml_tensor* down) {
    ggml_tensor* g = ggml_mul_mat(ctx, gate, x);
    ggml_tensor* u = ggml_mul_mat(ctx, up, x);
    return ggml_mul_mat(ctx, down, ggml_swiglu_split(ctx, g, u));
}

ggml_tensor* flash_attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v,
                             ggml_tensor* mask, float scale) {
    // flash_attn_ext wants q as [d, n_q, n_head] and returns [d, n_head, n_q].
    ggml_tensor* qp = ggml_permute(ctx, q, 0, 2, 1, 3);
    ggml_tensor* out = ggml_flash_attn_ext(ctx, qp, k, v, mask, scale, 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
    return ggml_reshape_2d(ctx, out, out->ne[0] * out->ne[1], out->ne[2]);
}

ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps) {
    ggml_tensor* y = ggml_norm(ctx, x, eps);
    if (w) y = ggml_mul(ctx, y, w);
    if (b) y = ggml_add(ctx, y, b);
    return y;
}

ggml_tensor* vision_attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, float scale) {
    // flash_attn_ext wants [d, n_tokens, n_head, n_seq] and returns [d, n_head, n_tokens, n_seq].
    ggml_tensor* qp = ggml_permute(ctx, q, 0, 2, 1, 3);
    ggml_tensor* kp = ggml_permute(ctx, k, 0, 2, 1, 3);
    ggml_tensor* vp = ggml_permute(ctx, v, 0, 2, 1, 3);
    ggml_tensor* out = ggml_flash_attn_ext(ctx, qp, kp, vp, nullptr, scale, 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
    return ggml_reshape_2d(ctx, out, out->ne[0] * out->ne[1], out->ne[2] * out->ne[3]);
}

std::vector<uint16_t> causal_mask_f16(int n_kv, int n_q, int q0) {
    const uint16_t zero = ggml_fp32_to_fp16(0.0f);
    const uint16_t ninf = ggml_fp32_to_fp16(-INFINITY);
    std::vector<uint16_t> m(static_cast<size_t>(n_kv) * n_q);
    for (int i = 0; i < n_q; ++i) {
        for (int j = 0; j < n_kv; ++j) m[static_cast<size_t>(i) * n_kv + j] = j <= q0 + i ? zero : ninf;
    }
    return m;
}

ggml_tensor* scatter_rows(ggml_context* ctx, ggml_tensor* x, ggml_tensor* src, ggml_tensor* rows) {
    return ggml_set_rows(ctx, x, src, rows);
}

ggml_tensor* add_rows(ggml_context* ctx, ggml_tensor* x, ggml_tensor* src, ggml_tensor* rows) {
    ggml_tensor* cur = ggml_get_rows(ctx, x, rows);
    return ggml_set_rows(ctx, x, ggml_add(ctx, cur, src), rows);
}

}  // namespace statekv
