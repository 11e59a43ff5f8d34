// The text decoder of a model family: hyper-parameters from GGUF metadata, weights, and the
// forward graph. One implementation per family in models/<family>.cpp.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../gguf_file.h"
#include "../graph.h"
#include "../weights.h"

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
    int n_deepstack = 0;       // qwen3vl: layers after which DeepStack features are added
    float rms_eps = 1e-6f;
    RopeSpec rope;
    float rope_scaling_factor = 1.0f;  // rope.scaling.factor (dynamic NTK of long sessions)
    int n_position_axes = 1;   // 3 for multi-axis RoPE (t, h, w)
    bool tied_output = false;
    std::vector<int32_t> eos_ids;  // end-of-generation token ids from the tokenizer metadata
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
};

// Attention of one layer for the tokens of the current graph. The cache policy decides what the
// queries see (themselves only, a KV cache, a carried state) and what is stored.
class LayerAttention {
public:
    virtual ~LayerAttention() = default;
    // q: [head_dim, n_head, n_tokens]; k, v: [head_dim, n_head_kv, n_tokens], RoPE applied.
    // Returns [head_dim * n_head, n_tokens].
    virtual ggml_tensor* attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) = 0;
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
    ggml_tensor* build(GraphBuilder& g, const DecoderInputs& in, LayerAttention& attn) const;

    // Width of a row of `embeddings`: n_embd, or n_embd * (1 + n_deepstack) with DeepStack.
    int embedding_width() const { return hp.n_embd * (1 + hp.n_deepstack); }

protected:
    // Family hook after each block (DeepStack injection for Qwen3-VL).
    virtual ggml_tensor* after_layer(GraphBuilder& g, const DecoderInputs& in, int il, ggml_tensor* x) const;

    // Shared pieces of the families' forward passes.
    ggml_tensor* embed(GraphBuilder& g, const DecoderInputs& in) const;
    // attn_norm -> q/k/v (+bias, +q/k norm) -> RoPE -> attention -> output projection.
    ggml_tensor* self_attention(GraphBuilder& g, const DecoderInputs& in, LayerAttention& attn, int il,
                                ggml_tensor* x) const;
    ggml_tensor* feed_forward(GraphBuilder& g, int il, ggml_tensor* x) const;
    ggml_tensor* logits(GraphBuilder& g, const DecoderInputs& in, ggml_tensor* x) const;

    // Loading helpers: the hyper-parameters every Qwen-style decoder has, and one layer's tensors.
    void read_common_hparams(const GgufFile& f);
    void load_common_weights(WeightStore& w, bool qkv_bias, bool qk_norm);
};

// Reads general.architecture and dispatches to the family; unknown architectures raise
// ModelError naming the file and the architectures that are supported.
std::unique_ptr<TextModel> load_text_model(const GgufFile& file, WeightStore& weights);

// Family factories (one per models/<family>.cpp).
std::unique_ptr<TextModel> make_qwen2(const GgufFile& file, WeightStore& weights);
std::unique_ptr<TextModel> make_qwen3(const GgufFile& file, WeightStore& weights);
std::unique_ptr<TextModel> make_qwen3vl(const GgufFile& file, WeightStore& weights);

}  // namespace statekv
