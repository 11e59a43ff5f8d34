// Graph building blocks shared by every model family: inputs, RMSNorm, RoPE, GQA attention,
// SwiGLU FFN, row gather/scatter. Written once; the model files compose them.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ggml.h"

namespace statekv {

// A graph under construction plus the host data of its inputs, uploaded after allocation.
class GraphBuilder {
public:
    explicit GraphBuilder(size_t max_nodes = 16384);
    ~GraphBuilder();
    GraphBuilder(const GraphBuilder&) = delete;
    GraphBuilder& operator=(const GraphBuilder&) = delete;

    ggml_context* ctx() const { return ctx_; }
    ggml_cgraph* graph() const { return gf_; }

    // A graph input; `bytes` is copied now and uploaded by upload_inputs().
    ggml_tensor* input(ggml_type type, std::vector<int64_t> shape, const void* bytes, const char* name);
    ggml_tensor* input_i32(const std::vector<int32_t>& v, const char* name);
    ggml_tensor* input_f32(const std::vector<float>& v, std::vector<int64_t> shape, const char* name);
    // An input every layer of the graph shares (a mask, a column of ones): made by `make` the
    // first time `key` is asked for, reused afterwards, so it is built and uploaded once.
    ggml_tensor* shared_input(const std::string& key, const std::function<ggml_tensor*()>& make);
    void upload_inputs();
    // Replace the host data of an input (for a graph that is run again with new values).
    void set_input(ggml_tensor* input, const void* bytes);

    void expand(ggml_tensor* t) { ggml_build_forward_expand(gf_, t); }

    // The graph runs on the CPU backend, so statekv's own CPU kernels (ggml custom ops, see
    // exact_activations.h) may be used; other devices get ggml's built-in ops.
    bool on_cpu = false;

private:
    ggml_context* ctx_ = nullptr;
    ggml_cgraph* gf_ = nullptr;
    struct PendingInput {
        ggml_tensor* tensor;
        std::vector<uint8_t> bytes;
    };
    std::vector<PendingInput> inputs_;
    std::map<std::string, ggml_tensor*> shared_;
};

// Keys/values of a contiguous run of tokens, as views in fused-attention layout
// [head_dim, n, n_head_kv] (any strides).
struct KVSegment {
    ggml_tensor* k = nullptr;
    ggml_tensor* v = nullptr;
    int64_t begin = 0;  // absolute index of the first key
    int64_t n = 0;
};

// How a family rotates queries and keys.
struct RopeSpec {
    int mode = 2;                        // GGML_ROPE_TYPE_NEOX or GGML_ROPE_TYPE_IMROPE
    int n_dims = 0;                      // rotated dims per head
    std::array<int, 4> sections{0, 0, 0, 0};  // multi-axis sections, in rotary pairs
    float freq_base = 10000.0f;
    float freq_scale = 1.0f;
    int n_ctx_orig = 0;
    bool multi_axis() const { return sections[0] + sections[1] + sections[2] + sections[3] > 0; }
};

// Positions as the graph wants them: n values, or 4 streams of n for multi-axis RoPE.
ggml_tensor* rope(ggml_context* ctx, ggml_tensor* x, ggml_tensor* positions, const RopeSpec& spec);

ggml_tensor* rms_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* weight, float eps);

// y = W x (+ b)
ggml_tensor* linear(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b = nullptr);

// down(silu(gate x) * up x)
ggml_tensor* swiglu_ffn(ggml_context* ctx, ggml_tensor* x, ggml_tensor* gate, ggml_tensor* up, ggml_tensor* down);

// Fused attention (ggml_flash_attn_ext) of q [d, n_head, n_q] over k, v [d, n_kv, n_head_kv]
// (any strides), with an additive F16 mask [n_kv, n_q] (0 or -inf). Returns [d * n_head, n_q].
ggml_tensor* flash_attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v,
                             ggml_tensor* mask, float scale);

// LayerNorm over ne0: (x - mean) / sqrt(var + eps) * w + b (w, b may be nullptr).
ggml_tensor* layer_norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b, float eps);

// Non-causal multi-head attention of vision encoders, within independent sequences: q, k, v
// [d, n_head, n_tokens, n_seq] (any strides, rows of d contiguous); every token attends to every
// token of its own sequence. Fused (ggml_flash_attn_ext, f32 precision), no mask.
// Returns [d * n_head, n_tokens * n_seq].
ggml_tensor* vision_attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, float scale);

// Host-side F16 mask rows: query i (absolute index q0 + i in a sequence of keys 0..n_kv-1)
// sees keys j <= q0 + i.
std::vector<uint16_t> causal_mask_f16(int n_kv, int n_q, int q0);

// Rows `rows` of x [n, m] replaced by src [n, k].
ggml_tensor* scatter_rows(ggml_context* ctx, ggml_tensor* x, ggml_tensor* src, ggml_tensor* rows);
// x with src added at rows `rows`.
ggml_tensor* add_rows(ggml_context* ctx, ggml_tensor* x, ggml_tensor* src, ggml_tensor* rows);

}  // namespace statekv
