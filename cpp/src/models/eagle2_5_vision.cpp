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

class Eagle25Vision final : public VisionModel {
public:
    Eagle25Vision(const GgufFile& f, WeightStore& w) {
        scale_ = static_cast<int>(f.get_int("clip.vision.projector.scale_factor", 1, kMaxImage));
        const VitSizes v = read_vit_sizes(f, scale_, "projector.scale_factor");
        n_embd_ = static_cast<int>(v.width);
        n_layer_ = v.n_layer;
        grid_ = v.grid;
        eps_ = v.eps;
        read_pixel_normalization(f, ByteRescale::F32);

        const int64_t C = n_embd_, N = int64_t(grid_) * grid_;
        embeddings_ = std::make_unique<PatchEmbeddings>(w, patch_size, C, N);
        VitOptions o;
        o.gelu_tanh = true;
        blocks_ = std::make_unique<VitBlocks>(f, w, n_layer_, C, v.ff, v.n_head, eps_, o);
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
        check_projection_dim(f, "mm.model.mlp.3.weight");
    }

    void check_input(int n_frames, int height, int width) const override {
        check_square_frames(n_frames, height, width, "Eagle 2.5", "statekv.families.eagle2_5.preprocess_frames");
    }

    int tokens_per_patch(int height, int width) const override {
        return (height / patch_size / scale_) * (width / patch_size / scale_);
    }

    ggml_tensor* build(GraphBuilder& g, ggml_tensor* pixels, int n, int height, int width) const override {
        check_input(n, height, width);
        ggml_context* ctx = g.ctx();
        const int64_t C = n_embd_, G = grid_, Np = G * G;
        ggml_tensor* x = embeddings_->with_positions(g, pixels);  // [C, Np * n]
        x = blocks_->build(g, x, Np, n, n_layer_);
        if (post_w_) x = layer_norm(ctx, x, post_w_, post_b_, eps_);
        return projector_->build(g, pixel_shuffle(ctx, ggml_reshape_3d(ctx, x, C, Np, n), G, scale_));
    }

private:
    int n_embd_ = 0, n_layer_ = 0, scale_ = 0, grid_ = 0;
    float eps_ = 1e-6f;
    ggml_tensor *post_w_ = nullptr, *post_b_ = nullptr;
    std::unique_ptr<PatchEmbeddings> embeddings_;
    std::unique_ptr<VitBlocks> blocks_;
    std::unique_ptr<MlpProjector> projector_;
};

}  // namespace

std::unique_ptr<VisionModel> make_eagle2_5_vision(const GgufFile& f, WeightStore& w) {
    return std::make_unique<Eagle25Vision>(f, w);
}

}  // namespace statekv
