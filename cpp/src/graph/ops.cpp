#include "graph/ops.h"

#include <cmath>

#include "graph/packed_matmul.h"

namespace statekv {

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

ggml_tensor* linear(GraphBuilder& g, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b) {
    ggml_tensor* y = packed_matmul(g, w, x);
    return b ? ggml_add(g.ctx(), y, b) : y;
}

ggml_tensor* swiglu_ffn(GraphBuilder& g, ggml_tensor* x, ggml_tensor* gate, ggml_tensor* up, ggml_tensor* down) {
    ggml_tensor* gated = packed_matmul(g, gate, x);
    ggml_tensor* u = packed_matmul(g, up, x);
    return packed_matmul(g, down, ggml_swiglu_split(g.ctx(), gated, u));
}

ggml_tensor* flash_attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v,
                             ggml_tensor* mask, float scale) {
    // flash_attn_ext wants q as [d, n_q, n_head] and returns [d, n_head, n_q].
    ggml_tensor* qp = ggml_permute(ctx, q, 0, 2, 1, 3);
    ggml_tensor* out = ggml_flash_attn_ext(ctx, qp, k, v, mask, scale, 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
    return ggml_reshape_2d(ctx, out, out->ne[0] * out->ne[1], out->ne[2]);
}

ggml_tensor* patch_embedding(GraphBuilder& g, ggml_tensor* pixels, ggml_tensor* kernel, ggml_tensor* bias, int patch) {
    ggml_context* ctx = g.ctx();
    const int64_t C = kernel->ne[3], n = pixels->ne[3];
    ggml_tensor* cols = ggml_im2col(ctx, kernel, pixels, patch, patch, 0, 0, 1, 1, true, GGML_TYPE_F32);
    const int64_t n_patches = cols->ne[1] * cols->ne[2];
    cols = ggml_reshape_2d(ctx, cols, cols->ne[0], n_patches * cols->ne[3]);
    ggml_tensor* w = ggml_reshape_2d(ctx, kernel, kernel->ne[0] * kernel->ne[1] * kernel->ne[2], C);
    ggml_tensor* x = packed_matmul(g, w, cols);
    if (bias) x = ggml_add(ctx, x, bias);
    return ggml_reshape_3d(ctx, x, C, n_patches, n);
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

ggml_tensor* scatter_rows(ggml_context* ctx, ggml_tensor* x, ggml_tensor* src, ggml_tensor* rows) {
    return ggml_set_rows(ctx, x, src, rows);
}

ggml_tensor* add_rows(ggml_context* ctx, ggml_tensor* x, ggml_tensor* src, ggml_tensor* rows) {
    ggml_tensor* cur = ggml_get_rows(ctx, x, rows);
    return ggml_set_rows(ctx, x, ggml_add(ctx, cur, src), rows);
}

}  // namespace statekv
