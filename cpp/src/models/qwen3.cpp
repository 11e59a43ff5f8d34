// Qwen3 text decoder (llama.cpp arch "qwen3"): as Qwen2 without q/k/v bias, with RMSNorm of
// each query and key head before RoPE.
#include "text_model.h"

namespace statekv {

namespace {

class Qwen3 final : public TextModel {
public:
    Qwen3(const GgufFile& f, WeightStore& w) {
        hp.arch = "qwen3";
        read_common_hparams(f);
        load_common_weights(w, /*qkv_bias*/ false, /*qk_norm*/ true);
    }
};

}  // namespace

std::unique_ptr<TextModel> make_qwen3(const GgufFile& f, WeightStore& w) { return std::make_unique<Qwen3>(f, w); }

}  // namespace statekv
