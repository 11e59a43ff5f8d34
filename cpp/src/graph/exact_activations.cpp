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

void gelu_tanh_task(ggml_tensor* dst, const ggml_tensor* a, int ith, int nth, void*) {
    const int64_t n = ggml_nelements(dst);
    // Chunks of whole cache lines per thread.
    const int64_t per = ((n + nth - 1) / nth + 15) / 16 * 16;
    const int64_t begin = std::min<int64_t>(n, per * ith);
    const int64_t end = std::min<int64_t>(n, begin + per);
    if (begin < end)
        gelu_tanh_loop(static_cast<const float*>(a->data) + begin, static_cast<float*>(dst->data) + begin,
                       end - begin);
}

}  // namespace

ggml_tensor* gelu_tanh_exact(ggml_context* ctx, ggml_tensor* x, bool on_cpu) {
    if (!on_cpu) return ggml_gelu(ctx, x);
    if (x->type != GGML_TYPE_F32 || !ggml_is_contiguous(x)) x = ggml_cont(ctx, ggml_cast(ctx, x, GGML_TYPE_F32));
    return ggml_map_custom1(ctx, x, gelu_tanh_task, GGML_N_TASKS_MAX, nullptr);
}

}  // namespace statekv
