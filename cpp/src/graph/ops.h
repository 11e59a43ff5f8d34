// Graph building blocks shared by every model family: RMSNorm, LayerNorm, RoPE, linear layers,
// SwiGLU FFN, fused attention, row gather/scatter. Written once; the model files compose them.
#pragma once

#include <array>
#include <cstdint>

#include "ggml.h"
#include "graph/builder.h"

namespace statekv {

// How a family rotates queries and keys.
struct RopeSpec {
    int mode = 2;                        // GGML_ROPE_TYPE_NEOX or GGML_ROPE_TYPE_IMROPE
    int n_dims = 0;                      // rotated dims per head
    std::array<int, 4> sections{0, 0, 0, 0};  // multi-axis sections, in rotary pairs
    float freq_base = 10000.0f;
    float freq_scale = 1.0f;
    int n_ctx_orig = 0;
    bool multi_axis() const { return sections[0] + sections[1] + sections[2] + sections[3] > 0; }
};

// Positions as the graph wants them: n values, or 4 streams of n for multi-axis RoPE.
ggml_tensor* rope(ggml_context* ctx, ggml_tensor* x, ggml_tensor* positions, const RopeSpec& spec);

ggml_tensor* rms_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* weight, float eps);

// y = W x (+ b). F16 and Q8_0 weights times enough columns on the CPU go through statekv's packed
// GEMM (packed_matmul, graph/packed_matmul.h), everything else through ggml_mul_mat.
ggml_tensor* linear(GraphBuilder& g, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b = nullptr);

// down(silu(gate x) * up x), each product as in linear
ggml_tensor* swiglu_ffn(GraphBuilder& g, ggml_tensor* x, ggml_tensor* gate, ggml_tensor* up, ggml_tensor* down);

// Fused attention (ggml_flash_attn_ext) of q [d, n_head, n_q] over k, v [d, n_kv, n_head_kv]
// (any strides), with an additive F16 mask [n_kv, n_q] (0 or -inf). Returns [d * n_head, n_q].
ggml_tensor* flash_attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v,
                             ggml_tensor* mask, float scale);

// LayerNorm over ne0: (x - mean) / sqrt(var + eps) * w + b (w, b may be nullptr).
ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps);

// Non-causal multi-head attention of vision encoders, within independent sequences: q, k, v
// [d, n_head, n_tokens, n_seq] (any strides, rows of d contiguous); every token attends to every
// token of its own sequence. Fused (ggml_flash_attn_ext, f32 precision), no mask.
// Returns [d * n_head, n_tokens * n_seq].
ggml_tensor* vision_attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, float scale);

// Non-overlapping P x P patches of pixels [W, H, 3, n] through a conv kernel [P, P, 3, C] (+ bias
// [C]) as im2col + one matrix product: [C, (W/P) * (H/P), n], patches row-major.
ggml_tensor* patch_embedding(GraphBuilder& g, ggml_tensor* pixels, ggml_tensor* kernel, ggml_tensor* bias, int patch);

// Rows `rows` of x [n, m] replaced by src [n, k].
ggml_tensor* scatter_rows(ggml_context* ctx, ggml_tensor* x, ggml_tensor* src, ggml_tensor* rows);
// x with src added at rows `rows`.
ggml_tensor* add_rows(ggml_context* ctx, ggml_tensor* x, ggml_tensor* src, ggml_tensor* rows);

}  // namespace statekv
