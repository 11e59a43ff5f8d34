#include "graph/exact_activations.h"

#include <algorithm>
#include <cstdint>

#include "graph/vec_math.h"

namespace statekv {
namespace {

using vec::f32x8;
using vec::splat;

// x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)); the tail is done in a padded block.
STATEKV_CPU_CLONES
void gelu_tanh_loop(const float* x, float* y, int64_t n) {
    const f32x8 a = splat(2.0f * 0.7978845608028654f);  // 2 sqrt(2 / pi)
    const f32x8 b = splat(2.0f * 0.7978845608028654f * 0.044715f);
    const f32x8 one = splat(1.0f);
    auto block = [&](f32x8 v) { return v / (one + vec::exp_clamped(-(v * (a + b * v * v)))); };
    int64_t i = 0;
    for (; i + vec::kLanes <= n; i += vec::kLanes) vec::store(y + i, block(vec::load(x + i)));
    if (i < n) vec::store_first(y + i, block(vec::load_first(x + i, n - i)), n - i);
}

// 0.5 x erfc(-x / sqrt(2)), with erfc(z) for z >= 0 as t exp(-z^2 + P(t)), t = 1 / (1 + z / 2)
// (the Chebyshev fit of Numerical Recipes' erfcc: relative error below 1.2e-7 for every z >= 0),
// and erfc(-z) = 2 - erfc(z).
STATEKV_CPU_CLONES
void gelu_erf_loop(const float* x, float* y, int64_t n) {
    static constexpr float kP[10] = {0.17087277f, -0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f,
                                     -0.18628806f, 0.09678418f,  0.37409196f, 1.00002368f, -1.26551223f};
    const f32x8 one = splat(1.0f), half = splat(0.5f), zero = splat(0.0f);
    auto block = [&](f32x8 v) {
        const f32x8 z = (v < zero ? -v : v) * splat(0.70710678118654752f);
        const f32x8 t = one / (one + half * z);
        f32x8 p = splat(kP[0]);
        for (int i = 1; i < 10; ++i) p = p * t + splat(kP[i]);
        const f32x8 tail = t * vec::exp_clamped(p - z * z);  // erfc(|x| / sqrt(2))
        return half * v * (v < zero ? tail : splat(2.0f) - tail);
    };
    int64_t i = 0;
    for (; i + vec::kLanes <= n; i += vec::kLanes) vec::store(y + i, block(vec::load(x + i)));
    if (i < n) vec::store_first(y + i, block(vec::load_first(x + i, n - i)), n - i);
}

// An elementwise loop over this task's share of the tensor: chunks of whole cache lines per thread.
template <void (*Loop)(const float*, float*, int64_t)>
void elementwise_task(ggml_tensor* dst, const ggml_tensor* a, int ith, int nth, void*) {
    const int64_t n = ggml_nelements(dst);
    const int64_t per = ((n + nth - 1) / nth + 15) / 16 * 16;
    const int64_t begin = std::min<int64_t>(n, per * ith);
    const int64_t end = std::min<int64_t>(n, begin + per);
    if (begin < end) Loop(static_cast<const float*>(a->data) + begin, static_cast<float*>(dst->data) + begin, end - begin);
}

ggml_tensor* elementwise(ggml_context* ctx, ggml_tensor* x, ggml_custom1_op_t task) {
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x)) x = ggml_cont(ctx, ggml_cast(ctx, x, GGML_TYPE_F32));
    return ggml_map_custom1(ctx, x, task, GGML_N_TASKS_MAX, nullptr);
}

}  // namespace

ggml_tensor* gelu_tanh_exact(ggml_context* ctx, ggml_tensor* x, bool on_cpu) {
    return on_cpu ? elementwise(ctx, x, elementwise_task<gelu_tanh_loop>) : ggml_gelu(ctx, x);
}

ggml_tensor* gelu_erf_exact(ggml_context* ctx, ggml_tensor* x, bool on_cpu) {
    return on_cpu ? elementwise(ctx, x, elementwise_task<gelu_erf_loop>) : ggml_gelu_erf(ctx, x);
}

}  // namespace statekv
