// statekv's own CPU product of F16 weights with F32 activations (the vision towers' matrices).
#pragma once

#include "graph/builder.h"

namespace statekv {

// y = w x as ggml_mul_mat(w, x) computes it: w [K, M] F16, x [K, N, ...] F32 -> y [M, N, ...] F32.
// On the CPU backend (g.on_cpu), with w a contiguous 2-D F16 matrix, x contiguous F32 and at least
// 32 columns, it runs statekv's packed GEMM; otherwise ggml_mul_mat.
//
// Why: ggml's CPU path for F16 weights rounds the activations to F16 and runs llamafile's tinyBLAS,
// which tiles registers but not caches: every 4x3 tile reads its weight rows and activation rows
// again from L3 or memory and converts both from F16 on every use. On a vision tower (M, K of
// 1,024-4,096 and N of a frame's 1,025 tokens) that ran at about a third of the FMA peak of the
// 2-core machines this project measures on (docs/performance.md section 11). Here the weights are
// widened once into F32 blocks that stay in L2, the activations are packed into panels that stay in
// L1, and a 24 x 4 register tile accumulates over 256 of K at a time: F32 throughout, so the
// activations are not rounded to F16 either (the features of an f16 file then match transformers'
// with the same f16-rounded weights to f32 round-off).
ggml_tensor* f16_weight_matmul(GraphBuilder& g, ggml_tensor* w, ggml_tensor* x);

}  // namespace statekv
