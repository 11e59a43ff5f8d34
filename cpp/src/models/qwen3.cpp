// Qwen3 text decoder (llama.cpp arch "qwen3"): as Qwen2 without q/k/v bias, with RMSNorm of
// each query and key head before RoPE.
#include "models/text_model.h"

namespace statekv {

std::unique_ptr<TextModel> make_qwen3(const GgufFile& f, WeightStore& w) {
    return make_plain_decoder(f, w, {"qwen3", /*qkv_bias*/ false, /*qk_norm*/ true, {"<|im_end|>", "<|endoftext|>"}});
}

}  // namespace statekv
