// Qwen2 / Qwen2.5 text decoder (llama.cpp arch "qwen2"): the LLM of InternVL3 and Eagle2.5.
// Pre-norm blocks with RMSNorm, q/k/v projections with bias, NeoX RoPE, GQA, SwiGLU FFN: the
// shared decoder of text_model.h as it is.
#include "models/text_model.h"

namespace statekv {

std::unique_ptr<TextModel> make_qwen2(const GgufFile& f, WeightStore& w) {
    // The ChatML turn end and the document end of the Qwen2 vocabulary.
    return make_plain_decoder(f, w, {"qwen2", /*qkv_bias*/ true, /*qk_norm*/ false, {"<|im_end|>", "<|endoftext|>"}});
}

}  // namespace statekv
