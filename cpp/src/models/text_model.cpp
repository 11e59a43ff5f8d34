#include "models/text_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace statekv {

namespace {

// Bounds on sizes, far above any released model and far below what would overflow the int32
// arithmetic of graph building or allocate absurd amounts before the tensor checks run.
constexpr int64_t kMaxWidth = int64_t(1) << 20;   // embedding / feed-forward width
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxHeadDim = 4096;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxContext = int64_t(1) << 30;
constexpr int64_t kMaxVocab = std::numeric_limits<int32_t>::max();

}  // namespace

void TextModel::read_common_hparams(const GgufFile& f, const DecoderTraits& traits) {
    hp.arch = traits.arch;
    // Every value is range-checked here, before anything is allocated or handed to ggml (which
    // asserts, i.e. aborts the process, on a negative epsilon or an odd rotary dimension).
    const std::string a = hp.arch + ".";
    hp.n_embd = static_cast<int>(f.get_int(a + "embedding_length", 1, kMaxWidth));
    hp.n_layer = static_cast<int>(f.get_int(a + "block_count", 1, kMaxLayers));
    hp.n_head = static_cast<int>(f.get_int(a + "attention.head_count", 1, kMaxHeads));
    hp.n_head_kv = static_cast<int>(f.get_int_or(a + "attention.head_count_kv", hp.n_head, 1, hp.n_head));
    hp.n_ff = static_cast<int>(f.get_int(a + "feed_forward_length", 1, kMaxWidth));
    hp.n_ctx_train = static_cast<int>(f.get_int(a + "context_length", 1, kMaxContext));
    hp.rms_eps = f.get_positive_f32(a + "attention.layer_norm_rms_epsilon", 1.0f);
    if (hp.n_head % hp.n_head_kv != 0) {
        f.fail(a + "attention.head_count (" + std::to_string(hp.n_head) + ") must be a multiple of " + a +
               "attention.head_count_kv (" + std::to_string(hp.n_head_kv) + ")");
    }
    if (!f.has(a + "attention.key_length") && hp.n_embd % hp.n_head != 0) {
        f.fail(a + "embedding_length " + std::to_string(hp.n_embd) + " is not a multiple of attention.head_count " +
               std::to_string(hp.n_head) + " (and there is no attention.key_length giving the head size)");
    }
    hp.head_dim = static_cast<int>(f.get_int_or(a + "attention.key_length", hp.n_embd / hp.n_head, 2, kMaxHeadDim));
    const int64_t v_len = f.get_int_or(a + "attention.value_length", hp.head_dim, 1, kMaxHeadDim);
    if (v_len != hp.head_dim) f.fail(a + "attention.value_length must equal " + a + "attention.key_length");
    hp.rope.mode = GGML_ROPE_TYPE_NEOX;
    hp.rope.n_dims = static_cast<int>(f.get_int_or(a + "rope.dimension_count", hp.head_dim, 2, hp.head_dim));
    if (hp.rope.n_dims % 2 != 0) {
        f.fail(a + "rope.dimension_count = " + std::to_string(hp.rope.n_dims) +
               " is odd, expected an even number of rotated dimensions (pairs) up to the head size " +
               std::to_string(hp.head_dim));
    }
    hp.rope.freq_base = f.get_positive_f32_or(a + "rope.freq_base", 10000.0f, 1e30f);
    hp.rope.n_ctx_orig = hp.n_ctx_train;
    hp.rope_scaling_factor = f.get_positive_f32_or(a + "rope.scaling.factor", 1.0f, 1e6f);
    if (f.has(a + "rope.scaling.type")) {
        const std::string t = f.get_str(a + "rope.scaling.type");
        if (t == "linear") {
            // Positions divided by the factor (llama.cpp's freq_scale): the trained context already
            // includes it, so long sessions start their NTK scaling from a factor of 1.
            hp.rope.freq_scale = 1.0f / hp.rope_scaling_factor;
            hp.rope_scaling_factor = 1.0f;
        } else if (t != "none") {
            f.fail("rope.scaling.type '" + t + "' is not supported (expected none or linear)");
        }
    }
    // End-of-generation ids: the declared eos/eot, then the family's end-of-turn tokens present.
    for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"}) {
        if (f.has(key)) hp.eos_ids.push_back(static_cast<int32_t>(f.get_int(key, 0, kMaxVocab - 1)));
    }
    for (int64_t id : f.indices_of_strings("tokenizer.ggml.tokens", traits.end_of_turn)) {
        if (id < kMaxVocab) hp.eos_ids.push_back(static_cast<int32_t>(id));
    }
}

void TextModel::load_common_weights(WeightStore& w, const DecoderTraits& traits) {
    const int64_t E = hp.n_embd, D = hp.head_dim, Hq = hp.n_head * D, Hkv = hp.n_head_kv * D, F = hp.n_ff;
    tok_embd = w.require("token_embd.weight", {E, -1}, TensorRole::Embedding);
    if (tok_embd->ne[1] < 1 || tok_embd->ne[1] > kMaxVocab) {
        w.fail("tensor 'token_embd.weight' has " + std::to_string(tok_embd->ne[1]) + " rows, expected a vocabulary of 1 to " +
               std::to_string(kMaxVocab) + " tokens");
    }
    hp.n_vocab = static_cast<int>(tok_embd->ne[1]);
    // block_count against the layers present, before sizing anything from it.
    const int64_t in_file = w.file().layers_with_prefix("blk.");
    if (in_file != hp.n_layer) {
        w.fail(hp.arch + ".block_count = " + std::to_string(hp.n_layer) + " but the file has tensors for " +
               std::to_string(in_file) + " layers" +
               (in_file > 0 ? " (blk.0 .. blk." + std::to_string(in_file - 1) + ")" : std::string(" (no blk.N.* tensors)")));
    }
    layers.resize(hp.n_layer);
    output_norm = w.require("output_norm.weight", {E}, TensorRole::Float);
    output = w.has("output.weight") ? w.require("output.weight", {E, hp.n_vocab}) : tok_embd;
    hp.tied_output = output == tok_embd;
    if (hp.tied_output) w.check_role(tok_embd, TensorRole::Matmul);  // also the output projection
    for (int il = 0; il < hp.n_layer; ++il) {
        auto& L = layers[il];
        const std::string p = "blk." + std::to_string(il) + ".";
        L.attn_norm = w.require(p + "attn_norm.weight", {E}, TensorRole::Float);
        L.wq = w.require(p + "attn_q.weight", {E, Hq});
        L.wk = w.require(p + "attn_k.weight", {E, Hkv});
        L.wv = w.require(p + "attn_v.weight", {E, Hkv});
        L.wo = w.require(p + "attn_output.weight", {Hq, E});
        if (traits.qkv_bias) {
            L.bq = w.require(p + "attn_q.bias", {Hq}, TensorRole::Float);
            L.bk = w.require(p + "attn_k.bias", {Hkv}, TensorRole::Float);
            L.bv = w.require(p + "attn_v.bias", {Hkv}, TensorRole::Float);
        }
        if (traits.qk_norm) {
            L.q_norm = w.require(p + "attn_q_norm.weight", {D}, TensorRole::Float);
            L.k_norm = w.require(p + "attn_k_norm.weight", {D}, TensorRole::Float);
        }
        L.ffn_norm = w.require(p + "ffn_norm.weight", {E}, TensorRole::Float);
        L.ffn_gate = w.require(p + "ffn_gate.weight", {E, F});
        L.ffn_up = w.require(p + "ffn_up.weight", {E, F});
        L.ffn_down = w.require(p + "ffn_down.weight", {F, E});
    }
}

ggml_tensor* TextModel::embed(GraphBuilder& g, const DecoderInputs& in) const {
    ggml_context* ctx = g.ctx();
    ggml_tensor* x = ggml_get_rows(ctx, tok_embd, in.token_ids);
    if (in.embeddings) {
        // Slice 0 of each row replaces the token embedding; DeepStack slices are added later.
        ggml_tensor* main = ggml_view_2d(ctx, in.embeddings, hp.n_embd, in.embeddings->ne[1],
                                         in.embeddings->nb[1], 0);
        x = scatter_rows(ctx, x, main, in.embedding_rows);
    }
    return x;
}

ggml_tensor* TextModel::self_attention(GraphBuilder& g, const DecoderInputs& in, LayerAttention& attn, int il,
                                       ggml_tensor* x) const {
    ggml_tensor* h = rms_norm(g.ctx(), x, layers[il].attn_norm, hp.rms_eps);
    return attention_block(g, in, attn, il, h, in.rope ? *in.rope : hp.rope);
}

ggml_tensor* TextModel::attention_block(GraphBuilder& g, const DecoderInputs& in, LayerAttention& attn, int il,
                                        ggml_tensor* h, const RopeSpec& rs) const {
    ggml_context* ctx = g.ctx();
    const auto& L = layers[il];
    const int n = in.n_tokens;
    ggml_tensor* q = ggml_reshape_3d(ctx, linear(g, h, L.wq, L.bq), hp.head_dim, hp.n_head, n);
    ggml_tensor* k = ggml_reshape_3d(ctx, linear(g, h, L.wk, L.bk), hp.head_dim, hp.n_head_kv, n);
    ggml_tensor* v = ggml_reshape_3d(ctx, linear(g, h, L.wv, L.bv), hp.head_dim, hp.n_head_kv, n);
    if (L.q_norm) q = rms_norm(ctx, q, L.q_norm, hp.rms_eps);
    if (L.k_norm) k = rms_norm(ctx, k, L.k_norm, hp.rms_eps);
    q = rope(ctx, q, in.positions, rs);
    k = rope(ctx, k, in.positions, rs);
    ggml_tensor* o = attn.attend(g, il, q, k, v);
    return linear(g, o, L.wo);
}

ggml_tensor* TextModel::feed_forward(GraphBuilder& g, int il, ggml_tensor* x) const {
    const auto& L = layers[il];
    ggml_tensor* h = rms_norm(g.ctx(), x, L.ffn_norm, hp.rms_eps);
    return swiglu_ffn(g, h, L.ffn_gate, L.ffn_up, L.ffn_down);
}

ggml_tensor* TextModel::logits(GraphBuilder& g, const DecoderInputs& in, ggml_tensor* x) const {
    ggml_context* ctx = g.ctx();
    if (in.output_rows) x = ggml_get_rows(ctx, x, in.output_rows);
    x = rms_norm(ctx, x, output_norm, hp.rms_eps);
    return linear(g, x, output);
}

ggml_tensor* TextModel::build(GraphBuilder& g, const DecoderInputs& in, LayerAttention& attn) const {
    ggml_tensor* x = embed(g, in);
    for (int il = 0; il < hp.n_layer; ++il) {
        x = ggml_add(g.ctx(), x, self_attention(g, in, attn, il, x));
        x = ggml_add(g.ctx(), x, feed_forward(g, il, x));
        x = after_layer(g, in, il, x);
    }
    return in.no_logits ? nullptr : logits(g, in, x);
}

ggml_tensor* TextModel::after_layer(GraphBuilder&, const DecoderInputs&, int, ggml_tensor* x) const { return x; }

namespace {

class PlainDecoder final : public TextModel {
public:
    PlainDecoder(const GgufFile& f, WeightStore& w, const DecoderTraits& traits) {
        read_common_hparams(f, traits);
        load_common_weights(w, traits);
    }
};

}  // namespace

std::unique_ptr<TextModel> make_plain_decoder(const GgufFile& file, WeightStore& weights, const DecoderTraits& traits) {
    return std::make_unique<PlainDecoder>(file, weights, traits);
}

}  // namespace statekv
