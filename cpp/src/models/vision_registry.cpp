// Vision families by clip.projector_type.
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "gguf.h"
#include "vision_model.h"

namespace statekv {

int64_t vision_layers_in_file(const GgufFile& f) {
    int64_t n = 0;
    for (int64_t i = 0; i < gguf_get_n_tensors(f.ctx()); ++i) {
        const char* name = gguf_get_tensor_name(f.ctx(), i);
        if (std::strncmp(name, "v.blk.", 6) != 0) continue;
        const char* p = name + 6;
        int64_t idx = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 7) idx = idx * 10 + (*p++ - '0'), ++digits;
        if (digits > 0 && *p == '.') n = std::max(n, idx + 1);
    }
    return n;
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
