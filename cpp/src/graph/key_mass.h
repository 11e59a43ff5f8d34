// statekv's own CPU attention kernel: a StateKV step's attention in one pass (the output and the
// key scores, without a probability matrix), and plain f32 attention for a few query rows.
#pragma once

#include "graph/attention.h"
#include "graph/builder.h"

namespace statekv {

// Attention of queries q over keys k / values v with `mask`, and per key j and KV head g the
// softmax mass sum over queries i and the query heads h of group g of
// softmax_j(scale * q[h, i] . k[g, j] + mask[i, j]), as one statekv custom op (CPU backend only:
// g.on_cpu). q: [d, H, n_q] F32 (rows contiguous); k, v: [d, n_kv, H_kv] F16 or F32 (any strides);
// mask: [n_kv, n_q] F16 (0 or -inf / -65504). Returns the output [d * H, n_q] and the scores
// [n_kv, H_kv], both F32 (ScoredAttention, graph/attention.h).
//
// Why not ggml's ops: with a head size of 64 as the inner dimension, ggml_mul_mat's tiled GEMM
// spends most of its time converting and reducing vectors, and the [n_kv, n_q, H] probability
// matrix (64 MB a layer for a 263-token step over 4,360 keys) then goes through memory three
// times (scores, softmax, reduction), while flash attention computes the output in a pass of its
// own. Here each (query, KV group) computes its G rows of scores into a per-thread buffer with the
// keys as the vector dimension, normalizes them there, adds them to the keys' mass and weighs the
// values with them (docs/performance.md section 9).
ScoredAttention attention_with_key_mass(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, ggml_tensor* mask,
                                        float scale);

// The same kernel's attention output alone, [d * H, n_q] F32, for q [d, H, n_q] F32 contiguous
// (whole rows of a contiguous tensor are) over k, v [d, n_kv, H_kv] (F16 or F32, any strides) with
// rows [mask_row0, mask_row0 + n_q) of `mask` ([n_kv, >= mask_row0 + n_q] F16). Used for the few query rows past the last whole tile of
// ggml's CPU flash attention (fused_attention, graph/attention.h): f32 throughout, as ggml's tiled
// kernel is, where ggml's kernel for such rows would round the queries and the sums to f16.
ggml_tensor* attention_f32(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, ggml_tensor* mask,
                           int64_t mask_row0, float scale);

}  // namespace statekv
