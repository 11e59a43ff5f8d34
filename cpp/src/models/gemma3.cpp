// Gemma 3 text decoder (llama.cpp arch "gemma3"; the LLM of Gemma 3 4B/12B/27B and the text-only
// 270M/1B). What differs from the shared pre-norm decoder, as llama.cpp's converter writes the file and
// transformers' Gemma3 runs it:
// - token embeddings (not the rows injected for images) are multiplied by sqrt(n_embd);
// - RMSNorm weights are stored with Gemma's +1 already added, so they are used as they are;
// - each block norms the attention and FFN outputs again before the residual adds
//   (post_attention_norm, post_ffw_norm), and q/k heads are RMS-normed before RoPE;
// - the FFN is down(gelu_tanh(gate x) * up x);
// - local layers see the last `attention.sliding_window` tokens and rotate with base 10,000
//   (`rope.freq_base_swa` when present); every sliding_window_pattern-th layer (default 6, i.e.
//   layers 5, 11, ...) is global, sees everything and rotates with `rope.freq_base` and the file's
//   rope scaling;
// - the attention scale is 1/sqrt(head_dim), except 1/sqrt(n_embd / n_head) for the 27B
//   (query_pre_attn_scalar of its config; llama.cpp recognises it by its 62 layers);
// - optional final logit soft-capping: cap * tanh(logits / cap).
#include <cmath>

#include "graph/exact_activations.h"
#include "models/text_model.h"

namespace statekv {

namespace {

class Gemma3 final : public TextModel {
public:
    Gemma3(const GgufFile& f, WeightStore& w) {
        const DecoderTraits traits{"gemma3", /*qkv_bias*/ false, /*qk_norm*/ true, {"<end_of_turn>"}};
        read_common_hparams(f, traits);
        const std::string a = hp.arch + ".";
        hp.attn_scale = 1.0f / std::sqrt(static_cast<float>(hp.head_dim));
        if (hp.n_layer == 62) hp.attn_scale = 1.0f / std::sqrt(static_cast<float>(hp.n_embd / hp.n_head));

        // Sliding windows. A window must see at least the token itself and must be shorter than
        // the trained context (a longer one is a global layer written wrongly).
        hp.sliding_window.assign(static_cast<size_t>(hp.n_layer), 0);
        if (f.has(a + "attention.sliding_window")) {
            const int64_t window = f.get_int(a + "attention.sliding_window", 0, hp.n_ctx_train);
            if (window == 0) {
                f.fail(a + "attention.sliding_window = 0: expected a window of 1 to " + std::to_string(hp.n_ctx_train) +
                       " tokens (the context length), or no key for a model without local layers");
            }
            const int64_t pattern = f.get_int_or(a + "attention.sliding_window_pattern", 6, 1, hp.n_layer + 1);
            for (int il = 0; il < hp.n_layer; ++il) {
                if (il % pattern < pattern - 1) hp.sliding_window[static_cast<size_t>(il)] = static_cast<int>(window);
            }
        }
        local_rope_ = hp.rope;
        local_rope_.freq_base = f.get_positive_f32_or(a + "rope.freq_base_swa", 10000.0f, 1e30f);
        local_rope_.freq_scale = 1.0f;  // rope scaling applies to global layers only
        if (f.has(a + "final_logit_softcapping")) {
            softcap_ = f.get_positive_f32(a + "final_logit_softcapping", 1e6f);
        }
        load_common_weights(w, traits);
        const int64_t E = hp.n_embd;
        for (int il = 0; il < hp.n_layer; ++il) {
            const std::string p = "blk." + std::to_string(il) + ".";
            layers[il].attn_post_norm = w.require(p + "post_attention_norm.weight", {E}, TensorRole::Float);
            layers[il].ffn_post_norm = w.require(p + "post_ffw_norm.weight", {E}, TensorRole::Float);
        }
    }

    ggml_tensor* build(GraphBuilder& g, const DecoderInputs& in, LayerAttention& attn) const override {
        ggml_context* ctx = g.ctx();
        // Text tokens are scaled by sqrt(n_embd); rows given as embeddings (images) are not.
        ggml_tensor* x = ggml_scale(ctx, ggml_get_rows(ctx, tok_embd, in.token_ids), std::sqrt(float(hp.n_embd)));
        if (in.embeddings) x = scatter_rows(ctx, x, in.embeddings, in.embedding_rows);
        for (int il = 0; il < hp.n_layer; ++il) {
            const auto& L = layers[il];
            const bool local = hp.window_of(il) > 0;
            // A long session's rope override (NTK scaling) concerns the global layers only.
            const RopeSpec& rs = local ? local_rope_ : (in.rope ? *in.rope : hp.rope);
            ggml_tensor* a = attention_block(g, in, attn, il, rms_norm(ctx, x, L.attn_norm, hp.rms_eps), rs);
            x = ggml_add(ctx, x, rms_norm(ctx, a, L.attn_post_norm, hp.rms_eps));
            ggml_tensor* h = rms_norm(ctx, x, L.ffn_norm, hp.rms_eps);
            h = ggml_mul(ctx, gelu_tanh_exact(ctx, linear(g, h, L.ffn_gate), g.on_cpu), linear(g, h, L.ffn_up));
            x = ggml_add(ctx, x, rms_norm(ctx, linear(g, h, L.ffn_down), L.ffn_post_norm, hp.rms_eps));
        }
        if (in.no_logits) return nullptr;
        ggml_tensor* logits_out = logits(g, in, x);
        if (softcap_ > 0.0f) {
            logits_out = ggml_scale(ctx, ggml_tanh(ctx, ggml_scale(ctx, logits_out, 1.0f / softcap_)), softcap_);
        }
        return logits_out;
    }

private:
    RopeSpec local_rope_;
    float softcap_ = 0.0f;
};

}  // namespace

std::unique_ptr<TextModel> make_gemma3(const GgufFile& f, WeightStore& w) { return std::make_unique<Gemma3>(f, w); }

}  // namespace statekv
