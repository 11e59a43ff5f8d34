// Eagle 2.5 vision (NVIDIA's Eagle2.5-VL): a SigLIP tower cut at the checkpoint's select_layer, the
// pixel shuffle and the LayerNorm -> Linear -> GELU -> Linear projector, in the mmproj layout
// statekv defines for it (docs/eagle2_5-gguf.md; llama.cpp has no Eagle 2.5 support):
// clip.projector_type "eagle2_5".
//
// Computation (NVlabs' Eagle2_5_VLForConditionalGeneration.extract_feature, one 448 x 448 tile
// per frame): P x P patch embedding (conv with bias) + learned position table (no CLS) -> the
// first block_count SigLIP blocks (LayerNorm, attention with biases, MLP fc1 -> GELU (tanh) ->
// fc2) -> post LayerNorm only when the features are the tower's last hidden state
// (select_layer -1) -> pixel shuffle by 2 (32 x 32 patches -> 256 rows of 4 C) -> LayerNorm ->
// Linear -> GELU (erf) -> Linear.
//
// The file holds only what runs: block_count = the blocks before the selected layer, v.post_ln
// present exactly when select_layer is -1 (clip.vision.eagle2_5.select_layer records it).
// Tensors: v.patch_embd.{weight [P, P, 3, C], bias [C]}, v.position_embd.weight [C, N], v.blk.L.*
// (models/vit.h), v.post_ln.{weight,bias} [C] (optional), mm.model.mlp.{0,1,3}.* (models/vit.h).
#include <memory>
#include <string>

#include "models/vision_model.h"
#include "models/vit.h"

namespace statekv {

namespace {

constexpr int64_t kMaxImage = 1 << 14;
constexpr int64_t kMaxWidth = int64_t(1) << 20;

class Eagle25Vision final : public VisionModel {
public:
    Eagle25Vision(const GgufFile& f, WeightStore& w) {
        image_size = static_cast<int>(f.get_int("clip.vision.image_size", 1, kMaxImage));
        patch_size = static_cast<int>(f.get_int("clip.vision.patch_size", 1, kMaxImage));
        n_embd_ = static_cast<int>(f.get_int("clip.vision.embedding_length", 1, kMaxWidth));
        const int64_t F = f.get_int("clip.vision.feed_forward_length", 1, kMaxWidth);
        n_layer_ = static_cast<int>(f.get_int("clip.vision.block_count", 1, f.layers_with_prefix("v.blk.")));
        const int n_head = static_cast<int>(f.get_int("clip.vision.attention.head_count", 1, n_embd_));
        const float eps = f.get_positive_f32_or("clip.vision.attention.layer_norm_epsilon", 1e-6f, 1.0f);
        eps_ = eps;
        scale_ = static_cast<int>(f.get_int("clip.vision.projector.scale_factor", 1, kMaxImage));
        read_pixel_normalization(f, ByteRescale::F32);
        if (n_embd_ % n_head != 0) {
            f.fail("clip.vision.embedding_length " + std::to_string(n_embd_) + " is not a multiple of "
                   "clip.vision.attention.head_count " + std::to_string(n_head));
        }
        if (image_size % patch_size != 0 || (image_size / patch_size) % scale_ != 0) {
            f.fail("clip.vision.image_size " + std::to_string(image_size) + " must be a multiple of patch_size " +
                   std::to_string(patch_size) + " x projector.scale_factor " + std::to_string(scale_));
        }
        grid_ = image_size / patch_size;
        size_multiple = image_size;

        const int64_t C = n_embd_, P = patch_size, N = int64_t(grid_) * grid_;
        patch_w_ = w.require("v.patch_embd.weight", {P, P, 3, C}, TensorRole::ConvKernel);
        patch_b_ = w.require("v.patch_embd.bias", {C}, TensorRole::Float);
        pos_ = w.require("v.position_embd.weight", {C, N}, TensorRole::Float);
        VitOptions o;
        o.gelu_tanh = true;
        blocks_ = std::make_unique<VitBlocks>(f, w, n_layer_, C, F, n_head, eps, o);
        post_w_ = w.optional("v.post_ln.weight", {C}, TensorRole::Float);
        post_b_ = w.optional("v.post_ln.bias", {C}, TensorRole::Float);
        if (!post_w_ != !post_b_) f.fail("v.post_ln needs both weight and bias");
        if (f.has("clip.vision.eagle2_5.select_layer")) {
            const int64_t select = f.get_int("clip.vision.eagle2_5.select_layer", INT32_MIN, INT32_MAX);
            if ((select == -1) != (post_w_ != nullptr)) {
                f.fail("clip.vision.eagle2_5.select_layer = " + std::to_string(select) +
                       (post_w_ ? " but v.post_ln is present (it is applied for select_layer -1 only)"
                                : " but v.post_ln is missing (select_layer -1 takes the last hidden state, post-norm included)"));
            }
        }
        projector_ = std::make_unique<MlpProjector>(w, C * scale_ * scale_);
        n_embd_out = static_cast<int>(projector_->n_out());
        if (f.has("clip.vision.projection_dim") && static_cast<int>(f.get_u32("clip.vision.projection_dim")) != n_embd_out) {
            f.fail("clip.vision.projection_dim " + std::to_string(f.get_u32("clip.vision.projection_dim")) +
                   " does not match the projector's output width " + std::to_string(n_embd_out) +
                   " (tensor 'mm.model.mlp.3.weight')");
        }
    }

    void check_input(int n_frames, int height, int width) const override {
        if (n_frames <= 0) throw InputError("encode_frames needs at least one frame");
        if (height != image_size || width != image_size) {
            throw InputError("Eagle 2.5 frames must be " + std::to_string(image_size) + " x " + std::to_string(image_size) +
                             " pixels (one tile per frame; resize with statekv.families.eagle2_5.preprocess_frames), got " +
                             std::to_string(height) + " x " + std::to_string(width));
        }
    }

    int tokens_per_patch(int height, int width) const override {
        return (height / patch_size / scale_) * (width / patch_size / scale_);
    }

    ggml_tensor* build(GraphBuilder& g, ggml_tensor* pixels, int n, int height, int width) const override {
        check_input(n, height, width);
        ggml_context* ctx = g.ctx();
        const int64_t C = n_embd_, G = grid_, Np = G * G;
        ggml_tensor* x = patch_embedding(ctx, pixels, patch_w_, patch_b_, patch_size);  // [C, Np, n]
        ggml_tensor* pos = pos_->type == GGML_TYPE_F32 ? pos_ : ggml_cast(ctx, pos_, GGML_TYPE_F32);
        x = ggml_reshape_2d(ctx, ggml_add(ctx, x, pos), C, Np * n);
        x = blocks_->build(g, x, Np, n, n_layer_);
        if (post_w_) x = layer_norm(ctx, x, post_w_, post_b_, eps_);
        return projector_->build(ctx, pixel_shuffle(ctx, ggml_reshape_3d(ctx, x, C, Np, n), G, scale_));
    }

private:
    int n_embd_ = 0, n_layer_ = 0, scale_ = 0, grid_ = 0;
    float eps_ = 1e-6f;
    ggml_tensor *patch_w_ = nullptr, *patch_b_ = nullptr, *pos_ = nullptr, *post_w_ = nullptr, *post_b_ = nullptr;
    std::unique_ptr<VitBlocks> blocks_;
    std::unique_ptr<MlpProjector> projector_;
};

}  // namespace

std::unique_ptr<VisionModel> make_eagle2_5_vision(const GgufFile& f, WeightStore& w) {
    return std::make_unique<Eagle25Vision>(f, w);
}

}  // namespace statekv
