// Qwen3-VL vision tower as llama.cpp's mmproj stores it (clip.projector_type "qwen3vl_merger"):
// a ViT over temporal patches of 2 frames x 16 x 16 pixels with a learned position table
// (bilinearly resampled to each frame's patch grid, as transformers' Qwen3VLVisionModel does),
// 2-D rotary embedding in attention (each temporal patch attends within itself), a 2x2 spatial
// merge with the merger MLP, and DeepStack features taken after the flagged vision layers, each
// through its own merger. Output rows: [main merger | deepstack 0 | deepstack 1 | ...] along
// features (llama.cpp's layout), one row per merged 2x2 block, temporal patch by temporal patch.
//
// Tensors (ggml shapes; C = vision width, M = C * merge^2, E = text width):
//   v.patch_embd.weight [16, 16, 3, C] (frame t = 0 of the Conv3d kernel), v.patch_embd.weight.1
//   (t = 1), v.patch_embd.bias [C]; v.position_embd.weight [C, S*S] (an S x S grid);
//   v.blk.N.{ln1,ln2}.{weight,bias} [C]; v.blk.N.attn_qkv.{weight [C, 3C], bias [3C]};
//   v.blk.N.attn_out.{weight [C, C], bias}; v.blk.N.ffn_up.{weight [C, F], bias};
//   v.blk.N.ffn_down.{weight [F, C], bias}; v.post_ln.{weight,bias} [C] (the merger's norm);
//   mm.0.{weight [M, M], bias}; mm.2.{weight [M, E], bias};
//   v.deepstack.N.norm.{weight,bias} [M], v.deepstack.N.fc1.{weight [M, M], bias},
//   v.deepstack.N.fc2.{weight [M, E], bias} for each layer N flagged in
//   clip.vision.is_deepstack_layers (absolute index; without the key, the layers that have them).
#include <cmath>
#include <string>
#include <vector>

#include "graph/exact_activations.h"
#include "models/vision_model.h"

namespace statekv {

namespace {

constexpr int64_t kMaxImage = 1 << 14;
constexpr int64_t kMaxWidth = int64_t(1) << 20;

class Qwen3VLVision final : public VisionModel {
public:
    Qwen3VLVision(const GgufFile& f, WeightStore& w) {
        frames_per_patch = 2;
        // Ranges first, before anything is sized from them (see text_model.cpp).
        patch_size = static_cast<int>(f.get_int("clip.vision.patch_size", 1, kMaxImage));
        merge_ = static_cast<int>(f.get_int_or("clip.vision.spatial_merge_size", 2, 1, 64));
        n_embd_ = static_cast<int>(f.get_int("clip.vision.embedding_length", 1, kMaxWidth));
        n_ff_ = static_cast<int>(f.get_int("clip.vision.feed_forward_length", 1, kMaxWidth));
        n_layer_ = static_cast<int>(f.get_int("clip.vision.block_count", 1, f.layers_with_prefix("v.blk.")));
        n_head_ = static_cast<int>(f.get_int("clip.vision.attention.head_count", 1, n_embd_));
        eps_ = f.get_positive_f32_or("clip.vision.attention.layer_norm_epsilon", 1e-6f, 1.0f);
        n_embd_out = static_cast<int>(f.get_int("clip.vision.projection_dim", 1, kMaxWidth));
        read_pixel_normalization(f, ByteRescale::F64);
        if (patch_size <= 0 || merge_ <= 0 || n_embd_ <= 0 || n_ff_ <= 0 || n_layer_ <= 0 || n_head_ <= 0 ||
            n_embd_out <= 0) {
            f.fail("clip.vision.{patch_size, spatial_merge_size, embedding_length, feed_forward_length, block_count, "
                   "attention.head_count, projection_dim} must all be positive");
        }
        if (n_embd_ % n_head_ != 0 || (n_embd_ / n_head_) % 4 != 0) {
            f.fail("clip.vision.embedding_length " + std::to_string(n_embd_) + " / attention.head_count " +
                   std::to_string(n_head_) + " must give a head size divisible by 4 (2-D rotary embedding)");
        }
        if (f.has("clip.vision.is_deepstack_layers")) {
            is_deepstack_ = f.get_bool_array("clip.vision.is_deepstack_layers");
        } else {  // a file without the flags: the DeepStack mergers present say which layers
            is_deepstack_.assign(n_layer_, false);
            for (int il = 0; il < n_layer_; ++il) {
                is_deepstack_[il] = w.has("v.deepstack." + std::to_string(il) + ".fc1.weight");
            }
        }
        if (static_cast<int>(is_deepstack_.size()) != n_layer_) {
            f.fail("clip.vision.is_deepstack_layers has " + std::to_string(is_deepstack_.size()) +
                   " entries, expected one per vision layer (" + std::to_string(n_layer_) + ")");
        }

        const int64_t C = n_embd_, F = n_ff_, P = patch_size, M = C * merge_ * merge_, E = n_embd_out;
        patch_w0_ = w.require("v.patch_embd.weight", {P, P, 3, C}, TensorRole::ConvKernel);
        patch_w1_ = w.require("v.patch_embd.weight.1", {P, P, 3, C}, TensorRole::ConvKernel);
        patch_b_ = w.require("v.patch_embd.bias", {C}, TensorRole::Float);
        pos_embd_ = w.require("v.position_embd.weight", {C, -1}, TensorRole::Float);
        const int64_t n_pos = pos_embd_->ne[1];
        if (n_pos < 1 || n_pos > kMaxImage * kMaxImage) {
            f.fail("tensor 'v.position_embd.weight' has " + std::to_string(n_pos) + " positions, expected a square grid of 1 to " +
                   std::to_string(kMaxImage * kMaxImage));
        }
        side_ = static_cast<int>(std::lround(std::sqrt(static_cast<double>(n_pos))));
        if (static_cast<int64_t>(side_) * side_ != n_pos) {
            f.fail("tensor 'v.position_embd.weight' has " + std::to_string(n_pos) +
                   " positions, expected a square grid (side x side)");
        }
        image_size = 0;  // variable: any multiple of patch_size * spatial_merge_size
        size_multiple = patch_size * merge_;
        layers_.resize(n_layer_);
        for (int il = 0; il < n_layer_; ++il) {
            Layer& L = layers_[il];
            const std::string p = "v.blk." + std::to_string(il) + ".";
            L.ln1_w = w.require(p + "ln1.weight", {C}, TensorRole::Float);
            L.ln1_b = w.require(p + "ln1.bias", {C}, TensorRole::Float);
            L.qkv_w = w.require(p + "attn_qkv.weight", {C, 3 * C});
            L.qkv_b = w.require(p + "attn_qkv.bias", {3 * C}, TensorRole::Float);
            L.out_w = w.require(p + "attn_out.weight", {C, C});
            L.out_b = w.require(p + "attn_out.bias", {C}, TensorRole::Float);
            L.ln2_w = w.require(p + "ln2.weight", {C}, TensorRole::Float);
            L.ln2_b = w.require(p + "ln2.bias", {C}, TensorRole::Float);
            L.up_w = w.require(p + "ffn_up.weight", {C, F});
            L.up_b = w.require(p + "ffn_up.bias", {F}, TensorRole::Float);
            L.down_w = w.require(p + "ffn_down.weight", {F, C});
            L.down_b = w.require(p + "ffn_down.bias", {C}, TensorRole::Float);
            if (is_deepstack_[il]) {
                const std::string d = "v.deepstack." + std::to_string(il) + ".";
                Merger& m = L.deepstack;
                m.norm_w = w.require(d + "norm.weight", {M}, TensorRole::Float);
                m.norm_b = w.require(d + "norm.bias", {M}, TensorRole::Float);
                m.fc1_w = w.require(d + "fc1.weight", {M, M});
                m.fc1_b = w.require(d + "fc1.bias", {M}, TensorRole::Float);
                m.fc2_w = w.require(d + "fc2.weight", {M, E});
                m.fc2_b = w.require(d + "fc2.bias", {E}, TensorRole::Float);
                ++n_deepstack;
            }
        }
        merger_.norm_w = w.require("v.post_ln.weight", {C}, TensorRole::Float);
        merger_.norm_b = w.require("v.post_ln.bias", {C}, TensorRole::Float);
        merger_.fc1_w = w.require("mm.0.weight", {M, M});
        merger_.fc1_b = w.require("mm.0.bias", {M}, TensorRole::Float);
        merger_.fc2_w = w.require("mm.2.weight", {M, E});
        merger_.fc2_b = w.require("mm.2.bias", {E}, TensorRole::Float);
    }

    void check_input(int n_frames, int height, int width) const override {
        const int unit = patch_size * merge_;
        if (n_frames <= 0 || n_frames % frames_per_patch != 0) {
            throw InputError("Qwen3-VL encodes frames in temporal pairs: got " + std::to_string(n_frames) +
                             " frames, expected an even number (repeat the last frame of an odd count, as "
                             "statekv.vision.qwen3vl.preprocess_frames does)");
        }
        if (height < unit || width < unit || height % unit != 0 || width % unit != 0) {
            throw InputError("Qwen3-VL frames must be multiples of " + std::to_string(unit) +
                             " pixels on each side (patch " + std::to_string(patch_size) + " x merge " +
                             std::to_string(merge_) + "), got " + std::to_string(height) + " x " +
                             std::to_string(width) + " (resize with statekv.vision.qwen3vl.preprocess_frames)");
        }
    }

    int tokens_per_patch(int height, int width) const override {
        const int unit = patch_size * merge_;
        return (height / unit) * (width / unit);
    }

    ggml_tensor* build(GraphBuilder& g, ggml_tensor* pixels, int n_frames, int height, int width) const override {
        ggml_context* ctx = g.ctx();
        const int P = patch_size, C = n_embd_, m = merge_;
        const int gw = width / P, gh = height / P;  // patch grid of one frame
        const int hw = gw * gh;                      // patches per temporal patch
        const int n_tp = n_frames / frames_per_patch;
        const int N = hw * n_tp;                     // patches in the batch
        const int D = C / n_head_;

        // Patch embedding: the Conv3d over (2 frames, P, P) is the sum of two Conv2d, one per frame.
        // im2col rows are (channel, ky, kx) like the kernels' [P, P, 3] layout.
        ggml_tensor* cols = ggml_im2col(ctx, patch_w0_, pixels, P, P, 0, 0, 1, 1, true, GGML_TYPE_F32);
        cols = ggml_reshape_4d(ctx, cols, cols->ne[0], hw, frames_per_patch, n_tp);  // [3PP, hw, t, tp]
        ggml_tensor* embd = nullptr;
        for (int t = 0; t < frames_per_patch; ++t) {
            ggml_tensor* frame = ggml_cont(ctx, ggml_view_3d(ctx, cols, cols->ne[0], hw, n_tp, cols->nb[1], cols->nb[3],
                                                             static_cast<size_t>(t) * cols->nb[2]));
            ggml_tensor* kernel = t == 0 ? patch_w0_ : patch_w1_;
            ggml_tensor* y = linear(g, frame, ggml_reshape_2d(ctx, kernel, 3 * P * P, C));  // [C, hw, tp]
            embd = embd ? ggml_add(ctx, embd, y) : y;
        }
        embd = ggml_add(ctx, embd, patch_b_);

        // Raster order -> merge-block order (block row, block col, row in block, col in block),
        // the order of transformers' patches and of the merger's groups of m*m rows.
        embd = ggml_reshape_4d(ctx, embd, C * m, gw / m, m, (gh / m) * n_tp);
        embd = ggml_cont(ctx, ggml_permute(ctx, embd, 0, 2, 1, 3));
        ggml_tensor* x = ggml_reshape_2d(ctx, embd, C, N);

        // Learned positions resampled to the gh x gw grid: 4 bilinear taps per patch
        // (align_corners, border clamp), computed on the host, gathered and weighted in the graph.
        std::vector<int32_t> tap_idx(4 * static_cast<size_t>(hw));
        std::vector<float> tap_w(4 * static_cast<size_t>(hw));
        std::vector<int32_t> pos_h(hw), pos_w(hw);
        for (int k = 0; k < hw; ++k) {
            const int in_col = k % m, in_row = (k / m) % m, block = k / (m * m);
            const int row = (block / (gw / m)) * m + in_row, col = (block % (gw / m)) * m + in_col;
            pos_h[k] = row;
            pos_w[k] = col;
            int th[2], tw[2];
            float wh[2], ww[2];
            axis_taps(row, gh, th, wh);
            axis_taps(col, gw, tw, ww);
            for (int a = 0; a < 2; ++a) {
                for (int b = 0; b < 2; ++b) {
                    const size_t j = static_cast<size_t>(a * 2 + b) * hw + k;
                    tap_idx[j] = th[a] * side_ + tw[b];
                    tap_w[j] = wh[a] * ww[b];
                }
            }
        }
        ggml_tensor* taps = ggml_get_rows(ctx, pos_embd_, g.input_i32(tap_idx, "vision_pos_taps"));  // [C, 4 hw]
        taps = ggml_mul(ctx, taps, g.input_f32(tap_w, {1, 4 * static_cast<int64_t>(hw)}, "vision_pos_weights"));
        ggml_tensor* pos = nullptr;
        for (int j = 0; j < 4; ++j) {
            ggml_tensor* v = ggml_view_2d(ctx, taps, C, hw, taps->nb[1], static_cast<size_t>(j) * hw * taps->nb[1]);
            pos = pos ? ggml_add(ctx, pos, v) : v;
        }
        // Repeated explicitly rather than broadcast: the scheduler reuses an allocation plan for a
        // graph of the same topology, and a plan made where x and pos had one shape (a single
        // temporal patch) may compute this add in place over pos, which is wrong once they differ.
        x = ggml_add(ctx, x, ggml_repeat(ctx, pos, x));

        // 2-D rotary positions: (row, col) of each patch, every temporal patch alike. ggml's vision
        // rope rotates pairs (i, i + D/2); the first D/4 angles use stream 0 (row), the next D/4
        // stream 1 (col), with frequencies base^(-4i/D), as transformers' axial rope.
        std::vector<int32_t> rope_pos(4 * static_cast<size_t>(N));
        for (int i = 0; i < N; ++i) {
            const int k = i % hw;
            rope_pos[i] = pos_h[k];
            rope_pos[N + i] = pos_w[k];
            rope_pos[2 * N + i] = pos_h[k];
            rope_pos[3 * N + i] = pos_w[k];
        }
        ggml_tensor* rpos = g.input_i32(rope_pos, "vision_rope_positions");
        int sections[GGML_MROPE_SECTIONS] = {D / 4, D / 4, D / 4, D / 4};
        const float scale = 1.0f / std::sqrt(static_cast<float>(D));

        ggml_tensor* features = nullptr;  // DeepStack outputs, concatenated along features
        for (int il = 0; il < n_layer_; ++il) {
            const Layer& L = layers_[il];
            ggml_tensor* cur = layer_norm(ctx, x, L.ln1_w, L.ln1_b, eps_);
            ggml_tensor* qkv = linear(g, cur, L.qkv_w, L.qkv_b);  // [3C, N]
            auto part = [&](int i) {
                return ggml_view_3d(ctx, qkv, D, n_head_, N, ggml_row_size(qkv->type, D), qkv->nb[1],
                                    ggml_row_size(qkv->type, static_cast<int64_t>(i) * C));
            };
            ggml_tensor* q = ggml_rope_multi(ctx, part(0), rpos, nullptr, D / 2, sections, GGML_ROPE_TYPE_VISION, 0,
                                             rope_base_, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
            ggml_tensor* k = ggml_rope_multi(ctx, part(1), rpos, nullptr, D / 2, sections, GGML_ROPE_TYPE_VISION, 0,
                                             rope_base_, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
            ggml_tensor* v = ggml_cont(ctx, part(2));
            // Each temporal patch is its own attention sequence.
            q = ggml_reshape_4d(ctx, q, D, n_head_, hw, n_tp);
            k = ggml_reshape_4d(ctx, k, D, n_head_, hw, n_tp);
            v = ggml_reshape_4d(ctx, v, D, n_head_, hw, n_tp);
            cur = vision_attention(ctx, q, k, v, scale);  // [C, N]
            x = ggml_add(ctx, x, linear(g, cur, L.out_w, L.out_b));

            cur = layer_norm(ctx, x, L.ln2_w, L.ln2_b, eps_);
            cur = gelu_tanh_exact(ctx, linear(g, cur, L.up_w, L.up_b), g.on_cpu);  // gelu_pytorch_tanh
            x = ggml_add(ctx, x, linear(g, cur, L.down_w, L.down_b));

            if (is_deepstack_[il]) {
                // DeepStack merger: norm over the concatenated m*m patches of a block.
                ggml_tensor* blocks = ggml_reshape_2d(ctx, x, static_cast<int64_t>(C) * m * m, N / (m * m));
                blocks = layer_norm(ctx, blocks, L.deepstack.norm_w, L.deepstack.norm_b, eps_);
                ggml_tensor* feat = merger_mlp(g, blocks, L.deepstack);
                features = features ? ggml_concat(ctx, features, feat, 0) : feat;
            }
        }
        // Main merger: norm per patch, then the MLP over each block's m*m patches.
        ggml_tensor* out = layer_norm(ctx, x, merger_.norm_w, merger_.norm_b, eps_);
        out = merger_mlp(g, ggml_reshape_2d(ctx, out, static_cast<int64_t>(C) * m * m, N / (m * m)), merger_);
        if (features) out = ggml_concat(ctx, out, features, 0);
        return out;
    }

private:
    struct Merger {
        ggml_tensor *norm_w = nullptr, *norm_b = nullptr, *fc1_w = nullptr, *fc1_b = nullptr, *fc2_w = nullptr,
                    *fc2_b = nullptr;
    };
    struct Layer {
        ggml_tensor *ln1_w, *ln1_b, *qkv_w, *qkv_b, *out_w, *out_b, *ln2_w, *ln2_b, *up_w, *up_b, *down_w, *down_b;
        Merger deepstack;
    };

    static ggml_tensor* merger_mlp(GraphBuilder& g, ggml_tensor* x, const Merger& m) {
        ggml_context* ctx = g.ctx();
        // nn.GELU() (erf) between the two linears.
        return linear(g, gelu_erf_exact(ctx, linear(g, x, m.fc1_w, m.fc1_b), g.on_cpu), m.fc2_w, m.fc2_b);
    }

    // Bilinear taps along one axis for patch `index` of `size`, into a table of side_ entries:
    // src = index * (side - 1) / (size - 1) (align_corners), taps floor and floor + 1 clamped to
    // the table, weights 1 - |src - tap| (transformers' get_vision_interpolation_indices_and_weights).
    void axis_taps(int index, int size, int taps[2], float weights[2]) const {
        const float denom = static_cast<float>(size - 1 > 1 ? size - 1 : 1);
        const float src = static_cast<float>(index) * static_cast<float>(side_ - 1) / denom;
        const float fl = std::floor(src);
        for (int o = 0; o < 2; ++o) {
            const int t = static_cast<int>(fl) + o;
            taps[o] = t < 0 ? 0 : (t > side_ - 1 ? side_ - 1 : t);
            const float d = std::fabs(src - fl - static_cast<float>(o));
            weights[o] = d < 1.0f ? 1.0f - d : 0.0f;
        }
    }

    int merge_ = 2, n_embd_ = 0, n_ff_ = 0, n_layer_ = 0, n_head_ = 0, side_ = 0;
    float eps_ = 1e-6f;
    float rope_base_ = 10000.0f;
    std::vector<bool> is_deepstack_;
    ggml_tensor *patch_w0_ = nullptr, *patch_w1_ = nullptr, *patch_b_ = nullptr, *pos_embd_ = nullptr;
    std::vector<Layer> layers_;
    Merger merger_;
};

}  // namespace

std::unique_ptr<VisionModel> make_qwen3vl_vision(const GgufFile& f, WeightStore& w) {
    return std::make_unique<Qwen3VLVision>(f, w);
}

}  // namespace statekv
