#include "models/vit.h"

#include <cmath>
#include <string>

#include "graph/exact_activations.h"
#include "graph/ops.h"

namespace statekv {

PatchEmbeddings::PatchEmbeddings(WeightStore& w, int patch, int64_t C, int64_t n_pos) : patch_(patch) {
    w_ = w.require("v.patch_embd.weight", {patch, patch, 3, C}, TensorRole::ConvKernel);
    b_ = w.require("v.patch_embd.bias", {C}, TensorRole::Float);
    pos_ = w.require("v.position_embd.weight", {C, n_pos}, TensorRole::Float);
}

ggml_tensor* PatchEmbeddings::patches(GraphBuilder& g, ggml_tensor* pixels) const {
    return patch_embedding(g, pixels, w_, b_, patch_);
}

ggml_tensor* PatchEmbeddings::positions(ggml_context* ctx) const {
    return pos_->type == GGML_TYPE_F32 ? pos_ : ggml_cast(ctx, pos_, GGML_TYPE_F32);
}

ggml_tensor* PatchEmbeddings::with_positions(GraphBuilder& g, ggml_tensor* pixels) const {
    ggml_context* ctx = g.ctx();
    ggml_tensor* x = ggml_add(ctx, patches(g, pixels), positions(ctx));
    return ggml_reshape_2d(ctx, x, x->ne[0], x->ne[1] * x->ne[2]);
}

VitBlocks::VitBlocks(const GgufFile& f, WeightStore& w, int n_layer, int64_t C, int64_t F, int n_head, float eps,
                     const VitOptions& o)
    : C_(C), n_head_(n_head), eps_(eps), o_(o) {
    layers_.resize(n_layer);
    for (int il = 0; il < n_layer; ++il) {
        Layer& L = layers_[il];
        const std::string p = "v.blk." + std::to_string(il) + ".";
        L.ln1_w = w.require(p + "ln1.weight", {C}, TensorRole::Float);
        L.ln2_w = w.require(p + "ln2.weight", {C}, TensorRole::Float);
        L.ln1_b = w.optional(p + "ln1.bias", {C}, TensorRole::Float);
        L.ln2_b = w.optional(p + "ln2.bias", {C}, TensorRole::Float);
        L.wq = w.require(p + "attn_q.weight", {C, C});
        L.wk = w.require(p + "attn_k.weight", {C, C});
        L.wv = w.require(p + "attn_v.weight", {C, C});
        for (auto [t, name] : {std::make_pair(&L.bq, "attn_q.bias"), std::make_pair(&L.bk, "attn_k.bias"),
                               std::make_pair(&L.bv, "attn_v.bias")}) {
            *t = o.qkv_bias ? w.require(p + name, {C}, TensorRole::Float) : w.optional(p + name, {C}, TensorRole::Float);
        }
        if (o.qk_norm) {
            L.q_norm = w.optional(p + "attn_q_norm.weight", {C}, TensorRole::Float);
            L.k_norm = w.optional(p + "attn_k_norm.weight", {C}, TensorRole::Float);
            if (!L.q_norm != !L.k_norm) f.fail("layer " + std::to_string(il) + " has only one of attn_q_norm / attn_k_norm");
        }
        L.wo = w.require(p + "attn_out.weight", {C, C});
        L.bo = w.optional(p + "attn_out.bias", {C}, TensorRole::Float);
        if (o.layer_scale) {
            L.ls1 = w.require(p + "ls1.weight", {C}, TensorRole::Float);
            L.ls2 = w.require(p + "ls2.weight", {C}, TensorRole::Float);
        }
        L.up_w = w.require(p + "ffn_up.weight", {C, F});
        L.up_b = w.require(p + "ffn_up.bias", {F}, TensorRole::Float);
        L.down_w = w.require(p + "ffn_down.weight", {F, C});
        L.down_b = w.require(p + "ffn_down.bias", {C}, TensorRole::Float);
    }
}

ggml_tensor* VitBlocks::norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b) const {
    if (o_.rms_norm) {
        ggml_tensor* y = rms_norm(ctx, x, w, eps_);
        return b ? ggml_add(ctx, y, b) : y;
    }
    return layer_norm(ctx, x, w, b, eps_);
}

ggml_tensor* VitBlocks::build(GraphBuilder& g, ggml_tensor* x, int64_t T, int64_t n, int n_run) const {
    ggml_context* ctx = g.ctx();
    const int64_t D = C_ / n_head_;
    const float kq_scale = 1.0f / std::sqrt(static_cast<float>(D));
    for (int il = 0; il < n_run; ++il) {
        const Layer& L = layers_[static_cast<size_t>(il)];
        ggml_tensor* h = norm(ctx, x, L.ln1_w, L.ln1_b);
        ggml_tensor* q = linear(g, h, L.wq, L.bq);
        ggml_tensor* k = linear(g, h, L.wk, L.bk);
        ggml_tensor* v = linear(g, h, L.wv, L.bv);
        if (L.q_norm) {
            q = rms_norm(ctx, q, L.q_norm, eps_);
            k = rms_norm(ctx, k, L.k_norm, eps_);
        }
        q = ggml_reshape_4d(ctx, q, D, n_head_, T, n);
        k = ggml_reshape_4d(ctx, k, D, n_head_, T, n);
        v = ggml_reshape_4d(ctx, v, D, n_head_, T, n);
        ggml_tensor* a = linear(g, vision_attention(ctx, q, k, v, kq_scale), L.wo, L.bo);
        x = ggml_add(ctx, x, L.ls1 ? ggml_mul(ctx, a, L.ls1) : a);

        h = linear(g, norm(ctx, x, L.ln2_w, L.ln2_b), L.up_w, L.up_b);
        h = o_.gelu_tanh ? gelu_tanh_exact(ctx, h, g.on_cpu) : gelu_erf_exact(ctx, h, g.on_cpu);
        h = linear(g, h, L.down_w, L.down_b);
        x = ggml_add(ctx, x, L.ls2 ? ggml_mul(ctx, h, L.ls2) : h);
    }
    return x;
}

ggml_tensor* pixel_shuffle(ggml_context* ctx, ggml_tensor* x, int64_t G, int64_t s) {
    const int64_t C = x->ne[0], n = x->ne[2];
    x = ggml_reshape_4d(ctx, ggml_cont(ctx, x), s * C, G / s, s, (G / s) * n);  // [(c, ch), j, r, (i, frame)]
    x = ggml_cont(ctx, ggml_permute(ctx, x, 0, 2, 1, 3));                          // [(c, ch), r, j, (i, frame)]
    return ggml_reshape_2d(ctx, x, s * s * C, (G / s) * (G / s) * n);
}

MlpProjector::MlpProjector(WeightStore& w, int64_t M) {
    mm0_w_ = w.require("mm.model.mlp.0.weight", {M}, TensorRole::Float);
    mm0_b_ = w.require("mm.model.mlp.0.bias", {M}, TensorRole::Float);
    mm1_w_ = w.require("mm.model.mlp.1.weight", {M, -1});
    const int64_t E = mm1_w_->ne[1];
    mm1_b_ = w.require("mm.model.mlp.1.bias", {E}, TensorRole::Float);
    mm3_w_ = w.require("mm.model.mlp.3.weight", {E, E});
    mm3_b_ = w.require("mm.model.mlp.3.bias", {E}, TensorRole::Float);
}

ggml_tensor* MlpProjector::build(GraphBuilder& g, ggml_tensor* x) const {
    ggml_context* ctx = g.ctx();
    x = layer_norm(ctx, x, mm0_w_, mm0_b_, 1e-5f);
    x = gelu_erf_exact(ctx, linear(g, x, mm1_w_, mm1_b_), g.on_cpu);
    return linear(g, x, mm3_w_, mm3_b_);
}

}  // namespace statekv
