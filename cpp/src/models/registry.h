// The families statekv runs, by the names their GGUF files carry: text decoders by
// general.architecture, vision towers by clip.projector_type, each tower with the decoder
// architectures it was trained with. Adding a family adds its rows in registry.cpp.
#pragma once

#include <memory>
#include <string>

#include "models/text_model.h"
#include "models/vision_model.h"

namespace statekv {

// Reads general.architecture and dispatches to the family; ModelError naming the file and the
// supported architectures otherwise.
std::unique_ptr<TextModel> load_text_model(const GgufFile& file, WeightStore& weights);

// Reads clip.projector_type and dispatches to the family; ModelError naming the file and the
// supported projectors otherwise.
std::unique_ptr<VisionModel> load_vision_model(const GgufFile& file, WeightStore& weights);

// ModelError naming both files when the two do not go together: a decoder the projector was
// not trained with, or rows of another width or number of DeepStack slices.
void check_pair(const VisionModel& vision, const std::string& mmproj_path, const TextModel& text,
                const std::string& text_path);

}  // namespace statekv
