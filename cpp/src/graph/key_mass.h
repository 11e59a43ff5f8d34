// The StateKV key scores on the CPU in one pass, without the probability matrix.
#pragma once

#include "graph/builder.h"

namespace statekv {

// Per key j and KV head g: the softmax mass sum over queries i and the query heads h of group g
// of softmax_j(scale * q[h, i] . k[g, j] + mask[i, j]), i.e. what summing ggml_soft_max_ext
// over rows gives, as a statekv custom op (CPU backend only: g.on_cpu).
// q: [d, H, n_q] F32 (rows contiguous); k: [d, n_kv, H_kv] F16 or F32; mask: [n_kv, n_q] F16
// (0 or -inf / -65504). Returns [n_kv, H_kv] F32.
//
// Why not ggml's ops: with a head size of 64 as the inner dimension, ggml_mul_mat's tiled GEMM
// spends most of its time converting and reducing vectors, and the [n_kv, n_q, H] probability
// matrix (64 MB a layer for a 263-token step over 4,360 keys) then goes through memory three
// times (scores, softmax, reduction). Here each (query, KV group) computes its G rows of scores
// into a per-thread buffer with the keys as the vector dimension, normalizes them there and adds
// them to the keys' mass: under half the time (docs/performance.md section 9).
ggml_tensor* attention_key_mass(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* mask, float scale);

}  // namespace statekv
