#include "graph/ops.h"

#include <cmath>

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

ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b) {
    ggml_tensor* y = ggml_mul_mat(ctx, w, x);
    return b ? ggml_add(ctx, y, b) : y;
}

ggml_tensor* swiglu_ffn(ggml_context* ctx, ggml_tensor* x, ggml_tensor* gate, ggml_tensor* up, ggml_tensor* down) {
    ggml_tensor* g = ggml_mul_mat(ctx, gate, x);
    ggml_tensor* u = ggml_mul_mat(ctx, up, x);
    return ggml_mul_mat(ctx, down, ggml_swiglu_split(ctx, g, u));
}

namespace {

// ggml's CPU flash attention works on tiles of 64 query rows of one head (ggml-cpu's
// GGML_FA_TILE_Q) against 64 keys at a time, and a partial tile costs as much as a full one;
// its threads cut the rows into chunks that stay on tile bounds only when each head's row count
// is a multiple of 64. A video step of 263 tokens (a frame's 256 rows and its text) thus
// computed 74 tiles per 64 keys where 256 rows need 56, which made statekv's steps deep in a
// video about 15% slower than llama.cpp's (it decodes the 256 image rows alone). On the CPU
// the rows past the last multiple of 64 therefore go to a second call, which ggml runs with its
// per-row kernel (it tiles 64 rows or more only): docs/performance.md section 8.
constexpr int64_t kCpuQueryTile = 64;

// Fused attention of qp [d, n_q, n_head, n_seq] over k, v; mask [n_kv, n_q] or nullptr.
// Returns [d, n_head, n_q, n_seq].
ggml_tensor* fused_attention(ggml_context* ctx, ggml_tensor* qp, ggml_tensor* k, ggml_tensor* v,
                             ggml_tensor* mask, float scale, bool on_cpu) {
    const int64_t n_q = qp->ne[1];
    const auto rows = [&](int64_t first, int64_t n) {
        ggml_tensor* q_rows = qp;
        ggml_tensor* m = mask;
        if (n != n_q) {
            q_rows = ggml_view_4d(ctx, qp, qp->ne[0], n, qp->ne[2], qp->ne[3], qp->nb[1], qp->nb[2], qp->nb[3],
                                  first * qp->nb[1]);
            // Whole rows of a contiguous mask: still contiguous, as flash_attn_ext requires.
            if (mask) m = ggml_view_2d(ctx, mask, mask->ne[0], n, mask->nb[1], first * mask->nb[1]);
        }
        ggml_tensor* out = ggml_flash_attn_ext(ctx, q_rows, k, v, m, scale, 0.0f, 0.0f);
        ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
        return out;
    };
    const int64_t tiled = n_q / kCpuQueryTile * kCpuQueryTile;
    if (!on_cpu || tiled == 0 || tiled == n_q) return rows(0, n_q);
    return ggml_concat(ctx, rows(0, tiled), rows(tiled, n_q - tiled), 2);
}

}  // namespace

ggml_tensor* flash_attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v,
                             ggml_tensor* mask, float scale, bool on_cpu) {
    // flash_attn_ext wants q as [d, n_q, n_head] and returns [d, n_head, n_q].
    ggml_tensor* out = fused_attention(ctx, ggml_permute(ctx, q, 0, 2, 1, 3), k, v, mask, scale, on_cpu);
    return ggml_reshape_2d(ctx, out, out->ne[0] * out->ne[1], out->ne[2]);
}

ggml_tensor* patch_embedding(ggml_context* ctx, ggml_tensor* pixels, ggml_tensor* kernel, ggml_tensor* bias, int patch) {
    const int64_t C = kernel->ne[3], n = pixels->ne[3];
    ggml_tensor* cols = ggml_im2col(ctx, kernel, pixels, patch, patch, 0, 0, 1, 1, true, GGML_TYPE_F32);
    const int64_t n_patches = cols->ne[1] * cols->ne[2];
    cols = ggml_reshape_2d(ctx, cols, cols->ne[0], n_patches * cols->ne[3]);
    ggml_tensor* w = ggml_reshape_2d(ctx, kernel, kernel->ne[0] * kernel->ne[1] * kernel->ne[2], C);
    ggml_tensor* x = ggml_mul_mat(ctx, w, cols);
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
    // Not cut in two on the CPU like the decoder's rows: a frame's 1,025 tokens would gain 6% of
    // the attention tiles and lose as much to joining the two outputs (one copy of every row).
    ggml_tensor* kp = ggml_permute(ctx, k, 0, 2, 1, 3);
    ggml_tensor* vp = ggml_permute(ctx, v, 0, 2, 1, 3);
    ggml_tensor* out = fused_attention(ctx, ggml_permute(ctx, q, 0, 2, 1, 3), kp, vp, nullptr, scale, false);
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
