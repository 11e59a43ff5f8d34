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

ggml_tensor* VisionModel::normalize(GraphBuilder& g, ggml_tensor* byte_ids, int n_frames, int height, int width) const {
    ggml_context* ctx = g.ctx();
    ggml_tensor* table = g.input_f32(byte_table_, {1, 3 * 256}, "pixel_table");
    ggml_tensor* x = ggml_get_rows(ctx, table, byte_ids);  // [1, W * H * 3 * n]
    return ggml_reshape_4d(ctx, x, width, height, 3, n_frames);
}

}  // namespace statekv
