// InternVL vision tower (InternViT) and its pixel-shuffle projector, as llama.cpp's mmproj stores
// it (clip.projector_type "internvl", written by llama.cpp's converter from the OpenGVLab
// checkpoint; statekv's converter writes the same layout from transformers' checkpoints).
//
// Computation (transformers' InternVLModel.get_image_features, single 448 x 448 tile per frame):
//   14 x 14 patch embedding (conv with bias) -> [CLS ; patches] + learned position table ->
//   pre-norm blocks: x += ls1 * attn(norm1(x)); x += ls2 * mlp(norm2(x)), attention non-causal
//   with q/k/v biases and, for the 6B tower, RMS q/k norms over the whole width; MLP fc1 -> GELU
//   (erf) -> fc2 -> drop CLS -> pixel shuffle (scale s: each s x s block of patches becomes one
//   row of s*s*C features ordered (dy, dx, c)) -> LayerNorm (eps 1e-5) -> Linear -> GELU -> Linear.
// Norms: LayerNorm, except RMSNorm for the 6B tower (width 3200, 45 layers), which is how
// llama.cpp tells them apart (the file has no norm-type key). The CLS token comes first and takes
// position 0 of the table, as in transformers (llama.cpp's graph appends CLS last instead, so its
// patches take table rows shifted by one).
//
// Tensors (ggml shapes; C = vision width, F = MLP width, N = (image/patch)^2 + 1,
// M = C * s^2, E = text width):
//   v.patch_embd.weight [P, P, 3, C], v.patch_embd.bias [C], v.class_embd [C],
//   v.position_embd.weight [C, N];
//   v.blk.L.ln1.{weight,bias} [C], v.blk.L.ln2.{weight,bias} [C] (bias absent with RMSNorm);
//   v.blk.L.attn_{q,k,v}.weight [C, C] (+ .bias [C]), v.blk.L.attn_out.{weight [C, C], bias [C]};
//   v.blk.L.attn_{q,k}_norm.weight [C] (optional); v.blk.L.ls1.weight, v.blk.L.ls2.weight [C];
//   v.blk.L.ffn_up.{weight [C, F], bias [F]}, v.blk.L.ffn_down.{weight [F, C], bias [C]};
//   mm.model.mlp.0.{weight,bias} [M], mm.model.mlp.1.{weight [M, E], bias [E]},
//   mm.model.mlp.3.{weight [E, E], bias [E]}.
// Metadata: clip.vision.{image_size, patch_size, embedding_length, feed_forward_length,
// block_count, attention.head_count, attention.layer_norm_epsilon, projection_dim (optional,
// checked), image_mean, image_std, projector.scale_factor}, clip.use_gelu / clip.use_silu.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "models/vision_model.h"
#include "models/vit.h"

namespace statekv {

namespace {

constexpr int64_t kMaxImage = 1 << 14;

class InternVLVision final : public VisionModel {
public:
    InternVLVision(const GgufFile& f, WeightStore& w) {
        scale_ = static_cast<int>(f.get_int("clip.vision.projector.scale_factor", 1, kMaxImage));
        const VitSizes v = read_vit_sizes(f, scale_, "projector.scale_factor");
        n_embd_ = static_cast<int>(v.width);
        n_ff_ = static_cast<int>(v.ff);
        n_layer_ = v.n_layer;
        n_head_ = v.n_head;
        eps_ = v.eps;
        grid_ = v.grid;
        read_pixel_normalization(f, ByteRescale::F32);
        if (f.get_bool_or("clip.use_silu", false)) {
            f.fail("clip.use_silu is set: this InternViT uses SiLU in its MLP, statekv supports GELU (clip.use_gelu)");
        }
        rms_ = n_embd_ == 3200 && n_layer_ == 45;  // InternViT-6B (llama.cpp's rule)

        const int64_t C = n_embd_, F = n_ff_, N = int64_t(grid_) * grid_ + 1;
        const int64_t M = C * scale_ * scale_;
        embeddings_ = std::make_unique<PatchEmbeddings>(w, patch_size, C, N);
        cls_ = w.require("v.class_embd", {C}, TensorRole::Float);
        VitOptions o;
        o.rms_norm = rms_;
        o.layer_scale = true;
        o.qk_norm = true;
        o.qkv_bias = false;
        blocks_ = std::make_unique<VitBlocks>(f, w, n_layer_, C, F, n_head_, eps_, o);
        projector_ = std::make_unique<MlpProjector>(w, M);
        n_embd_out = static_cast<int>(projector_->n_out());
        check_projection_dim(f, "mm.model.mlp.3.weight");
    }

    void check_input(int n_frames, int height, int width) const override {
        check_square_frames(n_frames, height, width, "InternVL", "statekv.families.internvl.preprocess_frames");
    }

    int tokens_per_patch(int height, int width) const override {
        return (height / patch_size / scale_) * (width / patch_size / scale_);
    }

    ggml_tensor* build(GraphBuilder& g, ggml_tensor* pixels, int n, int height, int width) const override {
        check_input(n, height, width);
        ggml_context* ctx = g.ctx();
        const int64_t C = n_embd_, G = grid_, Np = G * G, T = Np + 1;

        ggml_tensor* x = embeddings_->patches(g, pixels);  // [C, Np, n]

        // [CLS ; patches] per frame, plus the position table.
        ggml_tensor* cls = ggml_reshape_3d(ctx, as_f32(ctx, cls_), C, 1, 1);
        cls = ggml_repeat_4d(ctx, cls, C, 1, n, 1);
        x = ggml_concat(ctx, cls, x, 1);
        x = ggml_add(ctx, x, embeddings_->positions(ctx));
        x = ggml_reshape_2d(ctx, x, C, T * n);

        x = blocks_->build(g, x, T, n, n_layer_);

        // Drop CLS: [C, Np, n], then pixel shuffle and the projector.
        x = ggml_reshape_3d(ctx, x, C, T, n);
        x = ggml_view_3d(ctx, x, C, Np, n, x->nb[1], x->nb[2], x->nb[1]);
        return projector_->build(g, pixel_shuffle(ctx, x, G, scale_));
    }

private:
    static ggml_tensor* as_f32(ggml_context* ctx, ggml_tensor* t) {
        return t->type == GGML_TYPE_F32 ? t : ggml_cast(ctx, t, GGML_TYPE_F32);
    }

    int n_embd_ = 0, n_ff_ = 0, n_layer_ = 0, n_head_ = 0, scale_ = 0, grid_ = 0;
    float eps_ = 1e-6f;
    bool rms_ = false;
    ggml_tensor* cls_ = nullptr;
    std::unique_ptr<PatchEmbeddings> embeddings_;
    std::unique_ptr<VitBlocks> blocks_;
    std::unique_ptr<MlpProjector> projector_;
};

}  // namespace

std::unique_ptr<VisionModel> make_internvl_vision(const GgufFile& f, WeightStore& w) {
    return std::make_unique<InternVLVision>(f, w);
}

}  // namespace statekv
