// Arithmetic on the compiler's generic vector types for statekv's own CPU kernels (ggml custom
// ops): GCC and Clang lower them to AVX-512, AVX2, SSE or NEON as the calling function's target
// allows, so one source serves every CPU and STATEKV_CPU_CLONES picks the widest at load time.
#pragma once

#include <cstdint>
#include <cstring>

// Forced inlining: a helper compiled on its own would get the baseline target, not the vector
// width of the kernel calling it.
#define STATEKV_ALWAYS_INLINE inline __attribute__((always_inline))

namespace statekv::vec {

// Eight float lanes: two AVX2 FMAs a cycle on the CPUs of this project's machines (AMD's AVX-512
// runs a 16-lane FMA as two 8-lane halves), and few enough registers for SSE and NEON.
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
constexpr int kLanes = 8;

STATEKV_ALWAYS_INLINE f32x8 splat(float v) { return f32x8{v, v, v, v, v, v, v, v}; }

// Unaligned loads and stores of any of these vector types (f32x8 unless named, e.g. the 16-lane
// vectors of packed_matmul), whole or of the first n lanes (the rest read as 0).
template <class V = f32x8>
STATEKV_ALWAYS_INLINE V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
template <class V = f32x8>
STATEKV_ALWAYS_INLINE V load_first(const float* p, int64_t n) {
    V v = V{};
    std::memcpy(&v, p, sizeof(float) * static_cast<size_t>(n));
    return v;
}
template <class V>
STATEKV_ALWAYS_INLINE void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
template <class V>
STATEKV_ALWAYS_INLINE void store_first(float* p, V v, int64_t n) { std::memcpy(p, &v, sizeof(float) * static_cast<size_t>(n)); }
// n <= the vector's lanes: a whole vector when n is all of them (a fixed-size copy the compiler
// turns into one instruction; the variable-size one is a call to memcpy).
template <class V>
constexpr int64_t lanes_of = static_cast<int64_t>(sizeof(V) / sizeof(float));
template <class V = f32x8>
STATEKV_ALWAYS_INLINE V load_up_to(const float* p, int64_t n) { return n == lanes_of<V> ? load<V>(p) : load_first<V>(p, n); }
template <class V>
STATEKV_ALWAYS_INLINE void store_up_to(float* p, V v, int64_t n) {
    if (n == lanes_of<V>) store(p, v);
    else store_first(p, v, n);
}

STATEKV_ALWAYS_INLINE float max_lane(f32x8 v) {
    float m = v[0];
    for (int i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
    return m;
}
STATEKV_ALWAYS_INLINE double sum_lanes(f32x8 v) {
    double s = 0.0;
    for (int i = 0; i < kLanes; ++i) s += v[i];
    return s;
}

// exp(t) for t in [-80, 80] (clamped outside, so results stay normal floats: denormals are slow)
// to about 2 ulp: t = n ln2 + r with |r| <= ln2 / 2 (n rounded to nearest), exp(r) by the degree-6
// Cephes expf polynomial, then 2^n assembled in the exponent bits.
STATEKV_ALWAYS_INLINE f32x8 exp_clamped(f32x8 t) {
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

}  // namespace statekv::vec

// A kernel compiled for x86-64-v3 (AVX2, FMA) besides the baseline, chosen by the CPU at load time.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#define STATEKV_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
// The same with AVX-512 (x86-64-v4) first, for kernels written for 16-lane vectors.
#define STATEKV_CPU_CLONES_WIDE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define STATEKV_CPU_CLONES
#define STATEKV_CPU_CLONES_WIDE
#endif
