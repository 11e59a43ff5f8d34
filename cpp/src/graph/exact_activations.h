// Activations computed exactly in f32 on the CPU at the speed of ggml's table-based ones.
//
// ggml's CPU GELU (ggml_gelu) rounds its input to f16 and looks the result up in a table, an error
// of about 5e-4 relative that the transformers reference does not have; composing the exact formula
// from ggml's elementwise ops costs six passes over memory and a scalar tanhf per element (measured
// on a 2B model's vision tower, named in docs/performance.md: 7.9 s per frame against llama.cpp's 6.5 s).
// These kernels do the exact formula in one pass with a vectorizable exp, as a ggml custom op.
// Custom ops run on the CPU backend only, so a graph for another device uses ggml's own op there
// (GPU backends compute GELU in f32 without a table).
#pragma once

#include "ggml.h"

namespace statekv {

// PyTorch's gelu(x, approximate="tanh") = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
// written as x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)). `on_cpu`: the graph runs on the CPU
// backend (use the fused kernel); otherwise ggml_gelu.
ggml_tensor* gelu_tanh_exact(ggml_context* ctx, ggml_tensor* x, bool on_cpu);

// PyTorch's gelu(x) = 0.5 x (1 + erf(x / sqrt(2))) (nn.GELU()), to about 1e-6 relative: on the CPU
// one vectorized pass (ggml_gelu_erf calls libm's erff per value, about half again the cost of
// ggml's table; docs/performance.md section 11); otherwise ggml_gelu_erf.
ggml_tensor* gelu_erf_exact(ggml_context* ctx, ggml_tensor* x, bool on_cpu);

}  // namespace statekv
