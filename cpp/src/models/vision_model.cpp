#include "models/vision_model.h"

namespace statekv {

void VisionModel::read_pixel_normalization(const GgufFile& f, ByteRescale rescale) {
    image_mean = f.get_finite_f32_array("clip.vision.image_mean", 3);
    image_std = f.get_finite_f32_array("clip.vision.image_std", 3);
    for (float s : image_std) {
        if (!(s > 0.0f)) f.fail("clip.vision.image_std must be positive (one value per RGB channel)");
    }
    byte_table_.assign(3 * 256, 0.0f);
    for (int c = 0; c < 3; ++c) {
        for (int b = 0; b < 256; ++b) {
            // The factor is 1/255 rounded to float32 (numpy's float32(1 / 255)), or the double 1/255.
            const float x = rescale == ByteRescale::F32 ? static_cast<float>(b) * static_cast<float>(1.0 / 255.0)
                                                        : static_cast<float>(static_cast<double>(b) * (1.0 / 255.0));
            byte_table_[byte_id(c, static_cast<uint8_t>(b))] = (x - image_mean[c]) / image_std[c];
        }
    }
}

namespace {

constexpr int64_t kMaxImage = 1 << 14;
constexpr int64_t kMaxWidth = int64_t(1) << 20;

}  // namespace

VisionModel::VitSizes VisionModel::read_vit_sizes(const GgufFile& f, int merge, const char* merge_key) {
    VitSizes v;
    image_size = static_cast<int>(f.get_int("clip.vision.image_size", 1, kMaxImage));
    patch_size = static_cast<int>(f.get_int("clip.vision.patch_size", 1, kMaxImage));
    v.width = f.get_int("clip.vision.embedding_length", 1, kMaxWidth);
    v.ff = f.get_int("clip.vision.feed_forward_length", 1, kMaxWidth);
    v.n_layer = static_cast<int>(f.get_int("clip.vision.block_count", 1, f.layers_with_prefix("v.blk.")));
    v.n_head = static_cast<int>(f.get_int("clip.vision.attention.head_count", 1, v.width));
    v.eps = f.get_positive_f32_or("clip.vision.attention.layer_norm_epsilon", 1e-6f, 1.0f);
    if (v.width % v.n_head != 0) {
        f.fail("clip.vision.embedding_length " + std::to_string(v.width) + " is not a multiple of "
               "clip.vision.attention.head_count " + std::to_string(v.n_head));
    }
    if (image_size % patch_size != 0 || (image_size / patch_size) % merge != 0) {
        f.fail("clip.vision.image_size " + std::to_string(image_size) + " must be a multiple of patch_size " +
               std::to_string(patch_size) + " x " + merge_key + " " + std::to_string(merge));
    }
    v.grid = image_size / patch_size;
    size_multiple = image_size;
    return v;
}

void VisionModel::check_square_frames(int n, int height, int width, const std::string& family,
                                      const std::string& resize_with) const {
    if (n <= 0) throw InputError("encode_frames needs at least one frame");
    if (height != image_size || width != image_size) {
        throw InputError(family + " frames must be " + std::to_string(image_size) + " x " + std::to_string(image_size) +
                         " pixels (one tile per frame; resize with " + resize_with + "), got " + std::to_string(height) +
                         " x " + std::to_string(width));
    }
}

void VisionModel::check_projection_dim(const GgufFile& f, const std::string& tensor) const {
    if (f.has("clip.vision.projection_dim") && static_cast<int>(f.get_u32("clip.vision.projection_dim")) != n_embd_out) {
        f.fail("clip.vision.projection_dim " + std::to_string(f.get_u32("clip.vision.projection_dim")) +
               " does not match the projector's output width " + std::to_string(n_embd_out) + " (tensor '" + tensor + "')");
    }
}

ggml_tensor* VisionModel::normalize(GraphBuilder& g, ggml_tensor* byte_ids, int n_frames, int height, int width) const {
    ggml_context* ctx = g.ctx();
    ggml_tensor* table = g.input_f32(byte_table_, {1, 3 * 256}, "pixel_table");
    ggml_tensor* x = ggml_get_rows(ctx, table, byte_ids);  // [1, W * H * 3 * n]
    return ggml_reshape_4d(ctx, x, width, height, 3, n_frames);
}

}  // namespace statekv
