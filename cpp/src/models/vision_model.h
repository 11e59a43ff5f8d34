// The vision side of a model family: an encoder + projector loaded from an mmproj GGUF
// (general.architecture "clip", clip.projector_type naming the family). One implementation per
// family in models/<family>_vision.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "../gguf_file.h"
#include "../graph.h"
#include "../weights.h"

namespace statekv {

class VisionModel {
public:
    virtual ~VisionModel() = default;

    std::string projector;        // clip.projector_type
    int n_embd_out = 0;           // width of one visual row (= the text model's n_embd)
    int n_deepstack = 0;          // extra feature slices per row (Qwen3-VL); rows are
                                  // n_embd_out * (1 + n_deepstack) wide, llama.cpp's layout
    int frames_per_patch = 1;     // frames that make one temporal patch (Qwen3-VL: 2)
    int patch_size = 0;
    int image_size = 0;           // fixed input size (InternVL: 448), 0 when variable
    std::vector<float> image_mean, image_std;

    // Throws InputError when n frames of H x W cannot be encoded (size, count, divisibility).
    virtual void check_input(int n_frames, int height, int width) const = 0;
    // Visual rows per temporal patch for frames of H x W.
    virtual int tokens_per_patch(int height, int width) const = 0;
    // Graph: pixels [W, H, 3, n_frames] F32 (preprocessed) -> rows
    // [n_embd_out * (1 + n_deepstack), tokens_per_patch * n_frames / frames_per_patch].
    virtual ggml_tensor* build(GraphBuilder& g, ggml_tensor* pixels, int n_frames, int height, int width) const = 0;

protected:
    // clip.vision.image_mean / image_std: 3 finite values each, std positive.
    void read_pixel_normalization(const GgufFile& f);
};

// Reads clip.projector_type and dispatches to the family; unknown projectors raise ModelError
// naming the file and the supported projectors.
std::unique_ptr<VisionModel> load_vision_model(const GgufFile& file, WeightStore& weights);

// Family factories (one per models/<family>_vision.cpp), listed in vision_registry.cpp.
std::unique_ptr<VisionModel> make_qwen3vl_vision(const GgufFile& file, WeightStore& weights);
std::unique_ptr<VisionModel> make_internvl_vision(const GgufFile& file, WeightStore& weights);

}  // namespace statekv
