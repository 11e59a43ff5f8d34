#include "graph/exact_activations.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace statekv {
namespace {

// Eight lanes at a time in the compiler's generic vector type (GCC and Clang lower it to AVX2,
// AVX-512, SSE or NEON as the function's target allows).
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

inline f32x8 splat(float v) { return f32x8{v, v, v, v, v, v, v, v}; }

// exp(t) for t in [-80, 80] (clamped outside, so results stay normal floats: denormals are slow)
// to about 2 ulp: t = n ln2 + r with |r| <= ln2 / 2 (n rounded to nearest), exp(r) by the degree-6
// Cephes expf polynomial, then 2^n assembled in the exponent bits.
inline f32x8 exp_f32x8(f32x8 t) {
    const f32x8 lo = splat(-80.0f), hi = splat(80.0f);
    t = t < lo ? lo : t;
    t = t > hi ? hi : t;
    const f32x8 round_magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    const f32x8 n = (t * splat(1.44269504088896341f) + round_magic) - round_magic;
    const f32x8 r = (t - n * splat(0.693359375f)) - n * splat(-2.12194440e-4f);
    f32x8 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    const f32x8 er = p * r * r + r + splat(1.0f);
    const i32x8 bits = (__builtin_convertvector(n, i32x8) + 127) << 23;
    f32x8 scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return er * scale;
}

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define STATEKV_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define STATEKV_CPU_CLONES
#endif

// x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)); the tail is done in a padded block.
STATEKV_CPU_CLONES
void gelu_tanh_loop(const float* x, float* y, int64_t n) {
    const f32x8 a = splat(2.0f * 0.7978845608028654f);  // 2 sqrt(2 / pi)
    const f32x8 b = splat(2.0f * 0.7978845608028654f * 0.044715f);
    const f32x8 one = splat(1.0f);
    auto block = [&](f32x8 v) { return v / (one + exp_f32x8(-(v * (a + b * v * v)))); };
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        f32x8 v;
        std::memcpy(&v, x + i, sizeof v);  // fixed size: one unaligned vector load
        const f32x8 out = block(v);
        std::memcpy(y + i, &out, sizeof out);
    }
    if (i < n) {
        f32x8 v = splat(0.0f);
        std::memcpy(&v, x + i, sizeof(float) * (n - i));
        const f32x8 out = block(v);
        std::memcpy(y + i, &out, sizeof(float) * (n - i));
    }
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
