// Qwen3-VL text decoder (llama.cpp arch "qwen3vl"): Qwen3 blocks with interleaved multi-axis
// RoPE (temporal, height, width position streams) and DeepStack: visual features from
// intermediate vision layers are added to the hidden states at the visual rows after each of
// the first n_deepstack decoder layers.
#include "models/text_model.h"

namespace statekv {

namespace {

const DecoderTraits kTraits = {"qwen3vl", /*qkv_bias*/ false, /*qk_norm*/ true, {"<|im_end|>", "<|endoftext|>"}};

class Qwen3VL final : public TextModel {
public:
    Qwen3VL(const GgufFile& f, WeightStore& w) {
        read_common_hparams(f, kTraits);
        const std::vector<int64_t> s = f.get_int_array("qwen3vl.rope.dimension_sections", 0, hp.rope.n_dims / 2);
        if (s.size() < 3 || s.size() > 4) {
            f.fail("qwen3vl.rope.dimension_sections has " + std::to_string(s.size()) +
                   " entries, expected 4 (rotary pairs per axis: t, h, w, unused)");
        }
        int64_t pairs = 0;  // each entry is at most n_dims / 2, so the sum cannot overflow
        for (size_t i = 0; i < s.size(); ++i) {
            hp.rope.sections[i] = static_cast<int>(s[i]);
            pairs += s[i];
        }
        if (s[0] + s[1] + s[2] == 0) {
            // ggml's multi-axis rope takes the section index modulo their sum.
            f.fail("qwen3vl.rope.dimension_sections are all 0, expected rotary pairs for the t, h, w axes");
        }
        if (pairs * 2 > hp.rope.n_dims) {
            f.fail("qwen3vl.rope.dimension_sections sum to " + std::to_string(pairs) +
                   " rotary pairs, more than rope.dimension_count / 2 = " + std::to_string(hp.rope.n_dims / 2));
        }
        hp.rope.mode = GGML_ROPE_TYPE_IMROPE;
        hp.n_position_axes = 3;
        hp.n_deepstack = static_cast<int>(f.get_int_or("qwen3vl.n_deepstack_layers", 0, 0, hp.n_layer));
        load_common_weights(w, kTraits);
    }

    // DeepStack: slice il+1 of each visual row's embedding is added after block il.
    ggml_tensor* after_layer(GraphBuilder& g, const DecoderInputs& in, int il, ggml_tensor* x) const override {
        if (!in.embeddings || il >= hp.n_deepstack) return x;
        ggml_tensor* ds = ggml_view_2d(g.ctx(), in.embeddings, hp.n_embd, in.embeddings->ne[1], in.embeddings->nb[1],
                                       static_cast<size_t>(il + 1) * hp.n_embd * sizeof(float));
        return add_rows(g.ctx(), x, ds, in.embedding_rows);
    }
};

}  // namespace

std::unique_ptr<TextModel> make_qwen3vl(const GgufFile& f, WeightStore& w) { return std::make_unique<Qwen3VL>(f, w); }

}  // namespace statekv
