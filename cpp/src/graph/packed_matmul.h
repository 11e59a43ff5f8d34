// statekv's own CPU product of F16 or Q8_0 weights with F32 activations.
#pragma once

#include "graph/builder.h"

namespace statekv {

// y = w x as ggml_mul_mat(w, x) computes it: w [K, M] F16 or Q8_0, x [K, N, ...] F32 -> y [M, N, ...]
// F32. On the CPU backend (g.on_cpu), with w a contiguous 2-D matrix in a plain host buffer (not
// one of ggml's repacked layouts), x contiguous F32 and at least 32 columns, it runs statekv's
// packed GEMM; otherwise ggml_mul_mat (a decode step's single column among them).
//
// Why: ggml's CPU path rounds the activations to the weights' "dot type" (F16, or Q8_0 blocks for
// Q8_0 weights) and runs llamafile's tinyBLAS, which tiles registers but not caches: every small
// tile reads its weight rows and activation rows again from L3 or memory and converts them on
// every use (for Q8_0 on AVX2, two sign fix-ups, two widening multiply-adds and a conversion per
// 32 products). Here the weights are widened to F32 once per product into blocks that stay in L2,
// the activations are packed into panels that stay in L1, and a register tile accumulates F32
// multiply-adds over a block of K at a time (24 x 4 over 256 with 8-lane vectors; 48 x 8 over
// 128 with AVX-512's 16 lanes). Nothing is rounded but the weights as stored, so the
// result is the stored weights' exact product to f32 round-off (docs/performance.md section 11).
ggml_tensor* packed_matmul(GraphBuilder& g, ggml_tensor* w, ggml_tensor* x);

// The vector width of the kernel that packed_matmul builds into graphs: 16 lanes where the CPU and
// the OS run AVX-512, else 8. The environment variable STATEKV_GEMM_LANES=8 or 16 forces one (read
// at every graph build: for benchmarks, and for testing the 16-lane kernel on any x86 CPU).
int packed_matmul_lanes();

}  // namespace statekv
