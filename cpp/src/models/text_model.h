// The text decoder of a model family: hyper-parameters from GGUF metadata, weights, and the
// forward graph. One file per family in models/ (listed in models/registry.cpp); the shared
// pre-norm decoder lives here once.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "graph/attention.h"
#include "io/gguf_file.h"
#include "io/weights.h"
#include "memory/kv_store.h"

namespace statekv {

struct TextHParams {
    std::string arch;
    int n_vocab = 0;
    int n_embd = 0;
    int n_layer = 0;
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    int n_ff = 0;
    int n_ctx_train = 0;
    int n_deepstack = 0;       // layers after which DeepStack features are added (0: none)
    float rms_eps = 1e-6f;
    RopeSpec rope;
    float rope_scaling_factor = 1.0f;  // rope.scaling.factor (dynamic NTK of long sessions)
    int n_position_axes = 1;   // 3 for multi-axis RoPE (t, h, w)
    bool tied_output = false;
    std::vector<int32_t> eos_ids;  // end-of-generation token ids (tokenizer metadata + the family's)
    // Softmax scale of attention scores (1/sqrt(head_dim) unless the family says otherwise).
    float attn_scale = 0.0f;
    // Sliding-window attention: layer il sees only the last sliding_window[il] tokens (itself
    // included); 0 means every earlier token. Empty: no layer has a window.
    std::vector<int> sliding_window;
    int window_of(int il) const { return sliding_window.empty() ? 0 : sliding_window[static_cast<size_t>(il)]; }
    bool has_sliding_window() const {
        for (int w : sliding_window) if (w > 0) return true;
        return false;
    }
};

// What a family file declares about its decoder beyond what the GGUF says.
struct DecoderTraits {
    const char* arch;  // general.architecture
    bool qkv_bias;     // q/k/v projections have biases
    bool qk_norm;      // RMSNorm of each query and key head before RoPE
    // Token texts that end a turn in the family's chat format; their ids (looked up in
    // tokenizer.ggml.tokens) stop generation besides tokenizer.ggml.eos_token_id / eot_token_id.
    std::vector<std::string> end_of_turn;
};

struct DecoderLayerWeights {
    ggml_tensor* attn_norm = nullptr;
    ggml_tensor* wq = nullptr;
    ggml_tensor* wk = nullptr;
    ggml_tensor* wv = nullptr;
    ggml_tensor* bq = nullptr;
    ggml_tensor* bk = nullptr;
    ggml_tensor* bv = nullptr;
    ggml_tensor* q_norm = nullptr;
    ggml_tensor* k_norm = nullptr;
    ggml_tensor* wo = nullptr;
    ggml_tensor* ffn_norm = nullptr;
    ggml_tensor* ffn_gate = nullptr;
    ggml_tensor* ffn_up = nullptr;
    ggml_tensor* ffn_down = nullptr;
    ggml_tensor* attn_post_norm = nullptr;  // norm of the attention output before the residual add
    ggml_tensor* ffn_post_norm = nullptr;   // norm of the FFN output before the residual add
};

// Graph inputs of one forward pass, already built as graph tensors.
struct DecoderInputs {
    ggml_tensor* token_ids = nullptr;   // I32 [n]
    ggml_tensor* positions = nullptr;   // I32 [n] or [4 n]
    ggml_tensor* embeddings = nullptr;  // F32 [width, k] (optional)
    ggml_tensor* embedding_rows = nullptr;  // I32 [k]
    ggml_tensor* output_rows = nullptr; // I32 [m]: rows whose logits are wanted (nullptr: all)
    bool no_logits = false;             // the graph only fills caches: skip the output head
    const RopeSpec* rope = nullptr;     // override of hp.rope (long-context scaling)
    int n_tokens = 0;
};

class TextModel {
public:
    virtual ~TextModel() = default;
    TextHParams hp;
    ggml_tensor* tok_embd = nullptr;
    ggml_tensor* output_norm = nullptr;
    ggml_tensor* output = nullptr;  // == tok_embd when tied
    std::vector<DecoderLayerWeights> layers;

    // Logits [n_vocab, m] of the selected rows: embed, n_layer pre-norm blocks
    // (x += attention(norm x); x += ffn(norm x); after_layer), final norm, output projection.
    // With in.no_logits, returns nullptr (the attention policy's cache writes are the outputs).
    virtual ggml_tensor* build(GraphBuilder& g, const DecoderInputs& in, LayerAttention& attn) const;

    // Width of a row of `embeddings`: n_embd, or n_embd * (1 + n_deepstack) with DeepStack.
    int embedding_width() const { return hp.n_embd * (1 + hp.n_deepstack); }
    // The shape of its keys and values, for the caches.
    KVShape kv_shape() const { return {hp.n_layer, hp.n_head_kv, hp.head_dim, hp.attn_scale, hp.sliding_window}; }

protected:
    // Family hook after each block (e.g. DeepStack injection).
    virtual ggml_tensor* after_layer(GraphBuilder& g, const DecoderInputs& in, int il, ggml_tensor* x) const;

    // Shared pieces of the families' forward passes.
    ggml_tensor* embed(GraphBuilder& g, const DecoderInputs& in) const;
    // attn_norm -> q/k/v (+bias, +q/k norm) -> RoPE -> attention -> output projection.
    ggml_tensor* self_attention(GraphBuilder& g, const DecoderInputs& in, LayerAttention& attn, int il,
                                ggml_tensor* x) const;
    // The same after the norm: h (normed) -> q/k/v (+bias, +q/k norm) -> RoPE `rs` -> attention
    // -> output projection.
    ggml_tensor* attention_block(GraphBuilder& g, const DecoderInputs& in, LayerAttention& attn, int il,
                                 ggml_tensor* h, const RopeSpec& rs) const;
    ggml_tensor* feed_forward(GraphBuilder& g, int il, ggml_tensor* x) const;
    ggml_tensor* logits(GraphBuilder& g, const DecoderInputs& in, ggml_tensor* x) const;

    // Loading helpers: the hyper-parameters of the shared pre-norm decoder (with the end-of-turn
    // ids), and its tensors.
    void read_common_hparams(const GgufFile& f, const DecoderTraits& traits);
    void load_common_weights(WeightStore& w, const DecoderTraits& traits);
};

// The shared decoder as it is, for families that only declare traits.
std::unique_ptr<TextModel> make_plain_decoder(const GgufFile& file, WeightStore& weights, const DecoderTraits& traits);

}  // namespace statekv
