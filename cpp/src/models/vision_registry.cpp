// Vision families by clip.projector_type.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "gguf.h"
#include "vision_model.h"

namespace statekv {

void VisionModel::read_pixel_normalization(const GgufFile& f) {
    image_mean = f.get_finite_f32_array("clip.vision.image_mean", 3);
    image_std = f.get_finite_f32_array("clip.vision.image_std", 3);
    for (float s : image_std) {
        if (!(s > 0.0f)) f.fail("clip.vision.image_std must be positive (one value per RGB channel)");
    }
}

std::unique_ptr<VisionModel> load_vision_model(const GgufFile& file, WeightStore& weights) {
    using Factory = std::unique_ptr<VisionModel> (*)(const GgufFile&, WeightStore&);
    // One row per family file (models/<family>_vision.cpp).
    static const std::vector<std::pair<const char*, Factory>> families = {
        {"qwen3vl_merger", make_qwen3vl_vision},
        {"internvl", make_internvl_vision},
    };
    const std::string arch = file.get_str("general.architecture");
    if (arch != "clip") {
        file.fail("general.architecture is '" + arch + "', expected 'clip' for an mmproj (vision) file");
    }
    const std::string projector = file.get_str("clip.projector_type");
    std::string known;
    for (const auto& [name, make] : families) {
        if (projector == name) return make(file, weights);
        known += (known.empty() ? "" : ", ") + std::string(name);
    }
    file.fail("clip.projector_type '" + projector + "' is not supported (supported: " +
              (known.empty() ? std::string("none yet") : known) + ")");
}

}  // namespace statekv
