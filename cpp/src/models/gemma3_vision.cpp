// Gemma 3 vision: the SigLIP tower and Gemma 3's projector, as llama.cpp's mmproj stores them
// (clip.projector_type "gemma3", written by llama.cpp's converter from transformers'
// Gemma3ForConditionalGeneration; statekv's converter writes the same layout).
//
// Computation (transformers' Gemma3Model.get_image_features, one image per frame):
//   P x P patch embedding (conv with bias) + learned position table (no CLS) -> pre-norm blocks:
//   x += attn(ln1(x)); x += mlp(ln2(x)), attention non-causal with q/k/v/out biases, MLP fc1 ->
//   GELU (tanh) -> fc2 -> post LayerNorm -> the G x G patch grid average-pooled k x k (k = G / 16
//   for 896 px / patch 14: 256 rows) -> RMSNorm (weight stored with Gemma's +1 added) -> times the
//   input projection [C, E] (no bias).
// Norm epsilon: clip.vision.attention.layer_norm_epsilon for the tower's LayerNorms and the
// projector's RMSNorm, as both llama.cpp and transformers use.
//
// Tensors (ggml shapes; C = vision width, F = MLP width, N = (image/patch)^2, E = text width):
//   v.patch_embd.weight [P, P, 3, C], v.patch_embd.bias [C], v.position_embd.weight [C, N];
//   v.blk.L.ln1.{weight,bias} [C], v.blk.L.ln2.{weight,bias} [C];
//   v.blk.L.attn_{q,k,v,out}.{weight [C, C], bias [C]};
//   v.blk.L.ffn_up.{weight [C, F], bias [F]}, v.blk.L.ffn_down.{weight [F, C], bias [C]};
//   v.post_ln.{weight,bias} [C]; mm.soft_emb_norm.weight [C]; mm.input_projection.weight [E, C].
// Metadata: clip.vision.{image_size, patch_size, embedding_length, feed_forward_length,
// block_count, attention.head_count, attention.layer_norm_epsilon, image_mean, image_std,
// projection_dim (optional, checked)}, clip.vision.projector.scale_factor (the pooling kernel;
// absent: 4, llama.cpp's default for every Gemma 3).
#include <memory>
#include <string>
#include <vector>

#include "models/vision_model.h"
#include "models/vit.h"

namespace statekv {

namespace {

constexpr int64_t kMaxImage = 1 << 14;

class Gemma3Vision final : public VisionModel {
public:
    Gemma3Vision(const GgufFile& f, WeightStore& w) {
        // Ranges first, before anything is sized from them.
        pool_ = static_cast<int>(f.get_int_or("clip.vision.projector.scale_factor", 4, 1, kMaxImage));
        const VitSizes v = read_vit_sizes(f, pool_, "projector.scale_factor");
        n_embd_ = static_cast<int>(v.width);
        n_layer_ = v.n_layer;
        grid_ = v.grid;
        eps_ = v.eps;
        read_pixel_normalization(f, ByteRescale::F32);
        if (f.get_bool_or("clip.use_silu", false)) f.fail("clip.use_silu is set: Gemma 3's SigLIP uses GELU (clip.use_gelu)");

        const int64_t C = n_embd_, N = int64_t(grid_) * grid_;
        embeddings_ = std::make_unique<PatchEmbeddings>(w, patch_size, C, N);
        VitOptions o;
        o.gelu_tanh = true;
        blocks_ = std::make_unique<VitBlocks>(f, w, n_layer_, C, v.ff, v.n_head, eps_, o);
        post_w_ = w.require("v.post_ln.weight", {C}, TensorRole::Float);
        post_b_ = w.require("v.post_ln.bias", {C}, TensorRole::Float);
        soft_norm_ = w.require("mm.soft_emb_norm.weight", {C}, TensorRole::Float);
        // Used transposed (x times [C, E]): a float type, kept in f32 (llama.cpp writes it F16).
        proj_ = w.require("mm.input_projection.weight", {-1, C}, TensorRole::Float);
        n_embd_out = static_cast<int>(proj_->ne[0]);
        check_projection_dim(f, "mm.input_projection.weight");
    }

    void check_input(int n_frames, int height, int width) const override {
        check_square_frames(n_frames, height, width, "Gemma 3", "statekv.families.gemma3.preprocess_frames");
    }

    int tokens_per_patch(int height, int width) const override {
        return (height / patch_size / pool_) * (width / patch_size / pool_);
    }

    ggml_tensor* build(GraphBuilder& g, ggml_tensor* pixels, int n, int height, int width) const override {
        check_input(n, height, width);
        ggml_context* ctx = g.ctx();
        const int64_t C = n_embd_, G = grid_, Np = G * G;

        ggml_tensor* x = embeddings_->with_positions(g, pixels);  // [C, Np * n]

        x = blocks_->build(g, x, Np, n, n_layer_);
        x = layer_norm(ctx, x, post_w_, post_b_, eps_);

        // Average-pool the patch grid k x k per frame: [C, Np, n] -> [G, G, C, n] (x fastest) -> pool.
        const int64_t Gp = G / pool_;
        x = ggml_cont(ctx, ggml_permute(ctx, ggml_reshape_3d(ctx, x, C, Np, n), 1, 0, 2, 3));  // [Np, C, n]
        x = ggml_reshape_4d(ctx, x, G, G, C, n);
        x = ggml_pool_2d(ctx, x, GGML_OP_POOL_AVG, pool_, pool_, pool_, pool_, 0, 0);  // [Gp, Gp, C, n]
        x = ggml_reshape_3d(ctx, x, Gp * Gp, C, n);
        x = ggml_cont(ctx, ggml_permute(ctx, x, 1, 0, 2, 3));  // [C, Gp * Gp, n]
        x = ggml_reshape_2d(ctx, x, C, Gp * Gp * n);

        x = rms_norm(ctx, x, soft_norm_, eps_);
        return ggml_mul_mat(ctx, ggml_cont(ctx, ggml_transpose(ctx, proj_)), x);  // [E, Gp * Gp * n]
    }

private:
    int n_embd_ = 0, n_layer_ = 0, pool_ = 4, grid_ = 0;
    float eps_ = 1e-6f;
    std::unique_ptr<PatchEmbeddings> embeddings_;
    std::unique_ptr<VitBlocks> blocks_;
    ggml_tensor *post_w_ = nullptr, *post_b_ = nullptr, *soft_norm_ = nullptr, *proj_ = nullptr;
};

}  // namespace

std::unique_ptr<VisionModel> make_gemma3_vision(const GgufFile& f, WeightStore& w) {
    return std::make_unique<Gemma3Vision>(f, w);
}

}  // namespace statekv
