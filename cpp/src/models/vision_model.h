// The vision side of a model family: an encoder + projector loaded from an mmproj GGUF
// (general.architecture "clip", clip.projector_type naming the family). One file per tower in
// models/ (listed, with the decoders each pairs with, in models/registry.cpp).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "graph/builder.h"
#include "graph/ops.h"
#include "io/gguf_file.h"
#include "io/weights.h"

namespace statekv {

// How a family's image processor turns a pixel byte into [0, 1] before (x - mean) / std, to the
// bit (statekv's Python preprocessing does the same).
enum class ByteRescale {
    F32,  // float32(byte) * float32(1 / 255), in float32
    F64,  // float64(byte) * (1 / 255) in float64, rounded to float32
};

class VisionModel {
public:
    virtual ~VisionModel() = default;

    std::string projector;        // clip.projector_type
    int n_embd_out = 0;           // width of one visual row (= the text model's n_embd)
    int n_deepstack = 0;          // extra feature slices per row (DeepStack); rows are
                                  // n_embd_out * (1 + n_deepstack) wide, llama.cpp's layout
    int frames_per_patch = 1;     // frames that make one temporal patch (1: every frame alone)
    int patch_size = 0;
    int image_size = 0;           // fixed input size, 0 when variable
    int size_multiple = 0;        // frame sides are multiples of it (== image_size when fixed)
    std::vector<float> image_mean, image_std;  // clip.vision.image_mean / image_std (RGB)

    // Throws InputError when n frames of H x W cannot be encoded (size, count, divisibility).
    virtual void check_input(int n_frames, int height, int width) const = 0;
    // Visual rows per temporal patch for frames of H x W.
    virtual int tokens_per_patch(int height, int width) const = 0;
    // Graph: pixels [W, H, 3, n_frames] F32 (normalized) -> rows
    // [n_embd_out * (1 + n_deepstack), tokens_per_patch * n_frames / frames_per_patch].
    virtual ggml_tensor* build(GraphBuilder& g, ggml_tensor* pixels, int n_frames, int height, int width) const = 0;

    // Normalization in the graph: byte_ids I32 [W * H * 3 * n] (frame, channel, row, column
    // order; each value channel * 256 + byte, see byte_id) -> pixels [W, H, 3, n] F32, normalized
    // as the family's processor does, by one gather from a 3 x 256 table computed at load.
    ggml_tensor* normalize(GraphBuilder& g, ggml_tensor* byte_ids, int n_frames, int height, int width) const;
    static int32_t byte_id(int channel, uint8_t byte) { return channel * 256 + byte; }

protected:
    // clip.vision.image_mean / image_std: 3 finite values each, std positive; and the
    // normalization table for the family's byte rescale.
    void read_pixel_normalization(const GgufFile& f, ByteRescale rescale);

    // The clip.vision.* sizes of a ViT tower on square tiles, ranges checked before anything is
    // sized from them: sets image_size, patch_size and size_multiple, checks that the tile is a
    // whole grid of patches divisible by `merge` (a pooling or pixel-shuffle factor) and that the
    // width splits into the heads.
    struct VitSizes {
        int64_t width = 0, ff = 0;
        int n_layer = 0, n_head = 0, grid = 0;
        float eps = 1e-6f;
    };
    VitSizes read_vit_sizes(const GgufFile& f, int merge, const char* merge_key);
    // InputError unless n >= 1 frames of image_size x image_size (`family` and `resize_with` for the message).
    void check_square_frames(int n, int height, int width, const std::string& family, const std::string& resize_with) const;
    // ModelError when clip.vision.projection_dim is present and not n_embd_out (`tensor` gives it).
    void check_projection_dim(const GgufFile& f, const std::string& tensor) const;

private:
    std::vector<float> byte_table_;  // (rescale(byte) - mean[c]) / std[c] at byte_id(c, byte)
};

}  // namespace statekv
