// Building blocks of the vision towers stored in llama.cpp's mmproj files (v.blk.N.* names):
// pre-norm ViT encoder blocks (SigLIP, InternViT), the pixel shuffle, and the
// LayerNorm -> Linear -> GELU -> Linear projector (mm.model.mlp.{0,1,3}) that InternViT-style
// projectors share. The tower files in models/ compose them.
#pragma once

#include <vector>

#include "graph/builder.h"
#include "io/gguf_file.h"
#include "io/weights.h"

namespace statekv {

// v.patch_embd.{weight [P, P, 3, C], bias [C]} and v.position_embd.weight [C, n_pos] (n_pos: the
// patches, or one more with a class token that the tower places itself).
class PatchEmbeddings {
public:
    PatchEmbeddings(WeightStore& w, int patch, int64_t C, int64_t n_pos);
    // pixels [W, H, 3, n] -> [C, (W/P) * (H/P), n], positions not added.
    ggml_tensor* patches(GraphBuilder& g, ggml_tensor* pixels) const;
    // The position table as F32 [C, n_pos].
    ggml_tensor* positions(ggml_context* ctx) const;
    // SigLIP (no class token): patches + positions as [C, patches * n].
    ggml_tensor* with_positions(GraphBuilder& g, ggml_tensor* pixels) const;

private:
    int patch_ = 0;
    ggml_tensor *w_ = nullptr, *b_ = nullptr, *pos_ = nullptr;
};

// What a tower's blocks have besides the common pre-norm structure
// x += [ls1 *] attn(norm1(x)); x += [ls2 *] mlp(norm2(x)).
struct VitOptions {
    bool rms_norm = false;     // RMSNorm (weights only) instead of LayerNorm
    bool gelu_tanh = false;    // MLP activation: GELU (tanh approximation) instead of erf
    bool layer_scale = false;  // ls1 / ls2 per-channel scales
    bool qk_norm = false;      // optional attn_{q,k}_norm over the whole width (read if present)
    bool qkv_bias = true;      // attn_{q,k,v}.bias required (else optional)
};

class VitBlocks {
public:
    // v.blk.0 .. v.blk.(n_layer-1) of width C, MLP width F; `f` for error messages.
    VitBlocks(const GgufFile& f, WeightStore& w, int n_layer, int64_t C, int64_t F, int n_head, float eps,
              const VitOptions& o);
    // x [C, T * n] (n sequences of T tokens, attention within each) through the first n_run blocks.
    ggml_tensor* build(GraphBuilder& g, ggml_tensor* x, int64_t T, int64_t n, int n_run) const;
    int n_layer() const { return static_cast<int>(layers_.size()); }

private:
    struct Layer {
        ggml_tensor *ln1_w = nullptr, *ln1_b = nullptr, *ln2_w = nullptr, *ln2_b = nullptr;
        ggml_tensor *wq = nullptr, *wk = nullptr, *wv = nullptr, *bq = nullptr, *bk = nullptr, *bv = nullptr;
        ggml_tensor *q_norm = nullptr, *k_norm = nullptr, *wo = nullptr, *bo = nullptr;
        ggml_tensor *ls1 = nullptr, *ls2 = nullptr;
        ggml_tensor *up_w = nullptr, *up_b = nullptr, *down_w = nullptr, *down_b = nullptr;
    };
    ggml_tensor* norm(ggml_context* ctx, ggml_tensor* x, ggml_tensor* w, ggml_tensor* b) const;

    std::vector<Layer> layers_;
    int64_t C_ = 0;
    int n_head_ = 0;
    float eps_ = 1e-6f;
    VitOptions o_;
};

// Pixel shuffle of a G x G patch grid by s: x [C, G * G, n] (patches row-major) -> rows
// [s * s * C, (G / s)^2 * n], patch (s*i + r, s*j + c) going to row (i, j), features (r*s + c)*C + ch
// (InternVL's and Eagle's pixel_shuffle with downsample ratio 1/s).
ggml_tensor* pixel_shuffle(ggml_context* ctx, ggml_tensor* x, int64_t G, int64_t s);

// mm.model.mlp.0 (LayerNorm over M, eps 1e-5) -> mm.model.mlp.1 (Linear M -> E) -> GELU (erf) ->
// mm.model.mlp.3 (Linear E -> E): the projector of InternVL and Eagle 2.5.
class MlpProjector {
public:
    MlpProjector(WeightStore& w, int64_t M);
    ggml_tensor* build(GraphBuilder& g, ggml_tensor* x) const;
    int64_t n_out() const { return mm1_w_->ne[1]; }
    const ggml_tensor* out_weight() const { return mm3_w_; }

private:
    ggml_tensor *mm0_w_ = nullptr, *mm0_b_ = nullptr, *mm1_w_ = nullptr, *mm1_b_ = nullptr;
    ggml_tensor *mm3_w_ = nullptr, *mm3_b_ = nullptr;
};

}  // namespace statekv
