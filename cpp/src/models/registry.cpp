#include "models/registry.h"

#include <algorithm>
#include <vector>

namespace statekv {

// The family files (models/<family>.cpp).
std::unique_ptr<TextModel> make_qwen2(const GgufFile& file, WeightStore& weights);
std::unique_ptr<TextModel> make_qwen3(const GgufFile& file, WeightStore& weights);
std::unique_ptr<TextModel> make_qwen3vl(const GgufFile& file, WeightStore& weights);
std::unique_ptr<TextModel> make_gemma3(const GgufFile& file, WeightStore& weights);
std::unique_ptr<VisionModel> make_internvl_vision(const GgufFile& file, WeightStore& weights);
std::unique_ptr<VisionModel> make_qwen3vl_vision(const GgufFile& file, WeightStore& weights);
std::unique_ptr<VisionModel> make_gemma3_vision(const GgufFile& file, WeightStore& weights);
std::unique_ptr<VisionModel> make_eagle2_5_vision(const GgufFile& file, WeightStore& weights);

namespace {

struct TextFamily {
    const char* arch;  // general.architecture
    std::unique_ptr<TextModel> (*make)(const GgufFile&, WeightStore&);
};

struct VisionFamily {
    const char* projector;  // clip.projector_type
    std::unique_ptr<VisionModel> (*make)(const GgufFile&, WeightStore&);
    std::vector<std::string> decoders;  // the text architectures it was trained with
};

const TextFamily kTextFamilies[] = {
    {"qwen2", make_qwen2},
    {"qwen3", make_qwen3},
    {"qwen3vl", make_qwen3vl},
    {"gemma3", make_gemma3},
};

const VisionFamily kVisionFamilies[] = {
    // Qwen3-VL's merger with its own decoder.
    {"qwen3vl_merger", make_qwen3vl_vision, {"qwen3vl"}},
    // InternVL3 pairs with Qwen2.5, InternVL3.5 with Qwen3.
    {"internvl", make_internvl_vision, {"qwen2", "qwen3"}},
    // Gemma 3's SigLIP with its own decoder.
    {"gemma3", make_gemma3_vision, {"gemma3"}},
    // Eagle 2.5 (statekv's mmproj layout, docs/eagle2_5-gguf.md) with its Qwen2.5 decoder.
    {"eagle2_5", make_eagle2_5_vision, {"qwen2"}},
};

const VisionFamily* vision_family(const std::string& projector) {
    for (const VisionFamily& v : kVisionFamilies) {
        if (projector == v.projector) return &v;
    }
    return nullptr;
}

}  // namespace

std::unique_ptr<TextModel> load_text_model(const GgufFile& file, WeightStore& weights) {
    const std::string arch = file.get_str("general.architecture");
    std::string known;
    for (const TextFamily& t : kTextFamilies) {
        if (arch == t.arch) return t.make(file, weights);
        known += known.empty() ? t.arch : std::string(", ") + t.arch;
    }
    if (arch == "clip") {
        file.fail("general.architecture is 'clip': this is an mmproj (vision) file; pass the text "
                  "model GGUF as the model and this file as mmproj");
    }
    file.fail("unknown architecture '" + arch + "' in general.architecture (supported: " + known + ")");
}

std::unique_ptr<VisionModel> load_vision_model(const GgufFile& file, WeightStore& weights) {
    const std::string arch = file.get_str("general.architecture");
    if (arch != "clip") {
        file.fail("general.architecture is '" + arch + "', expected 'clip' for an mmproj (vision) file");
    }
    const std::string projector = file.get_str("clip.projector_type");
    if (const VisionFamily* v = vision_family(projector)) {
        std::unique_ptr<VisionModel> m = v->make(file, weights);
        m->projector = v->projector;
        return m;
    }
    std::string known;
    for (const VisionFamily& v : kVisionFamilies) known += (known.empty() ? "" : ", ") + std::string(v.projector);
    file.fail("clip.projector_type '" + projector + "' is not supported (supported: " +
              (known.empty() ? std::string("none yet") : known) + ")");
}

void check_pair(const VisionModel& vision, const std::string& mmproj_path, const TextModel& text,
                const std::string& text_path) {
    const std::string& arch = text.hp.arch;
    const VisionFamily* v = vision_family(vision.projector);
    if (v && std::find(v->decoders.begin(), v->decoders.end(), arch) == v->decoders.end()) {
        std::string archs;
        for (const auto& a : v->decoders) archs += (archs.empty() ? "" : " or ") + a;
        throw ModelError(mmproj_path + ": a '" + vision.projector + "' projector goes with a " + archs + " text model, but " +
                         text_path + " is " + arch + ": these two files are not a pair");
    }
    if (vision.n_embd_out != text.hp.n_embd) {
        throw ModelError(mmproj_path + ": the projector's output width " + std::to_string(vision.n_embd_out) +
                         " does not match the embedding width " + std::to_string(text.hp.n_embd) + " of " + text_path +
                         " (" + arch + "): these two files are not a pair");
    }
    if (vision.n_deepstack != text.hp.n_deepstack) {
        throw ModelError(mmproj_path + ": the projector gives " + std::to_string(vision.n_deepstack) +
                         " DeepStack feature slices but " + text_path + " expects " + std::to_string(text.hp.n_deepstack) +
                         ": these two files are not a pair");
    }
}

}  // namespace statekv
