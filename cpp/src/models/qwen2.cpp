// Qwen2 / Qwen2.5 text decoder (llama.cpp arch "qwen2"): the LLM of InternVL3 and Eagle2.5.
// Pre-norm blocks with RMSNorm, q/k/v projections with bias, NeoX RoPE, GQA, SwiGLU FFN.
#include "text_model.h"

namespace statekv {

namespace {

class Qwen2 final : public TextModel {
public:
    Qwen2(const GgufFile& f, WeightStore& w) {
        hp.arch = "qwen2";
        read_common_hparams(f);
        load_common_weights(w, /*qkv_bias*/ true, /*qk_norm*/ false);
    }
};

}  // namespace

std::unique_ptr<TextModel> make_qwen2(const GgufFile& f, WeightStore& w) { return std::make_unique<Qwen2>(f, w); }

}  // namespace statekv
