#include "graph/packed_matmul.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "statekv/statekv.h"
#include "graph/vec_math.h"

namespace statekv {
namespace {

// The kernel's shape at one vector width. Eight lanes (AVX2, and SSE/NEON as pairs or quads):
// a 24 x 4 register tile (12 accumulators, three weight vectors and a broadcast) within AVX2's
// 16 vector registers. Measured on the Zen 1 machine (K = 1,024, M = 4,096, N = 1,025,
// 2 threads): 24 x 4 42-46 GFLOP/s, 32 x 3 41-47, 16 x 6 35-40 (two broadcasts more per step),
// 8 x 12 23. A 256-deep block keeps a 24-row weight panel (24 KB) and a 4-column activation panel
// (4 KB) in a 32 KB L1 together.
struct Width8 {
    typedef float f32v __attribute__((vector_size(32)));
    typedef _Float16 f16v __attribute__((vector_size(16)));
    typedef int8_t i8v __attribute__((vector_size(8)));
    static constexpr int64_t kLanes = 8, kVecs = 3, kCols = 4, kDepth = 256;
};
// Sixteen lanes (AVX-512's 32 vector registers hold a larger tile): a 48 x 8 tile
// (24 accumulators, three weight vectors), 128 deep so that a 48-row panel (24 KB) and an
// 8-column panel (4 KB) share a 32 KB L1. Chosen from the register and cache sizes; not measured
// on an AVX-512 machine yet (docs/performance.md section 12).
struct Width16 {
    typedef float f32v __attribute__((vector_size(64)));
    typedef _Float16 f16v __attribute__((vector_size(32)));
    typedef int8_t i8v __attribute__((vector_size(16)));
    static constexpr int64_t kLanes = 16, kVecs = 3, kCols = 8, kDepth = 128;
};

// Weight rows per packed block, a multiple of both widths' panels: 192 x 256 F32 = 192 KB
// (192 x 128 at 16 lanes), inside a 512 KB L2.
constexpr int64_t kBlockRows = 192;
static_assert(kBlockRows % (Width8::kLanes * Width8::kVecs) == 0 && kBlockRows % (Width16::kLanes * Width16::kVecs) == 0,
              "a packed block holds whole panels");
// Fewer columns than this go to ggml (packing would not pay for itself on a decode step).
constexpr int64_t kMinColumns = 32;

// ggml's Q8_0 block: 32 int8 values and their F16 scale.
constexpr int64_t kQ8Block = 32;
struct Q8Block {
    _Float16 scale;
    int8_t q[kQ8Block];
};
static_assert(sizeof(Q8Block) == 34, "ggml's block_q8_0 is 34 bytes");
static_assert(Width8::kDepth % kQ8Block == 0 && Width16::kDepth % kQ8Block == 0, "a depth block holds whole Q8_0 blocks");

// acc[c] (rows r .. r + kRows of column c) += sum over depth of wp[k][kRows] * xp[k][c].
template <class S>
STATEKV_ALWAYS_INLINE void tile(const float* wp, const float* xp, int64_t depth, typename S::f32v (&acc)[S::kCols][S::kVecs]) {
    using V = typename S::f32v;
    constexpr int64_t kRows = S::kVecs * S::kLanes;
#pragma GCC unroll 8
    for (int64_t c = 0; c < S::kCols; ++c)
#pragma GCC unroll 4
        for (int64_t u = 0; u < S::kVecs; ++u) acc[c][u] = V{};
    for (int64_t k = 0; k < depth; ++k) {
        V w[S::kVecs];
#pragma GCC unroll 4
        for (int64_t u = 0; u < S::kVecs; ++u) w[u] = vec::load<V>(wp + k * kRows + u * S::kLanes);
        // Unrolled so that the accumulators live in registers.
#pragma GCC unroll 8
        for (int64_t c = 0; c < S::kCols; ++c) {
            const float xv = xp[k * S::kCols + c];
#pragma GCC unroll 4
            for (int64_t u = 0; u < S::kVecs; ++u) acc[c][u] += w[u] * xv;
        }
    }
}

struct Operands {
    const char* w;  // [K, M] F16 or Q8_0, rows of K contiguous
    bool q8;        // Q8_0 weights (else F16)
    size_t w_row;   // bytes between weight rows
    const char* x;  // [K, N] F32, columns of K contiguous
    size_t x_col;
    float* y;  // [M, N] F32
    int64_t K, M, N;
};

// Weight rows [m0, m0 + rows) x depth [k0, k0 + depth) widened to F32 as kRows-row panels, each
// [depth][kRows] (rows past M are zero).
template <class S>
STATEKV_ALWAYS_INLINE void pack_weights(const Operands& o, int64_t m0, int64_t rows, int64_t k0, int64_t depth, float* out) {
    using V = typename S::f32v;
    constexpr int64_t kLanes = S::kLanes, kRows = S::kVecs * S::kLanes;
    for (int64_t p = 0; p < rows; p += kRows) {
        float* panel = out + p * depth;
        for (int64_t r = 0; r < kRows; ++r) {
            const int64_t m = m0 + p + r;
            if (p + r >= rows || m >= o.M) {
                for (int64_t k = 0; k < depth; ++k) panel[k * kRows + r] = 0.0f;
                continue;
            }
            const char* row = o.w + static_cast<size_t>(m) * o.w_row;
            if (o.q8) {
                // k0 and depth are multiples of 32 (K is, and so are the depth blocks).
                const Q8Block* blocks = reinterpret_cast<const Q8Block*>(row) + k0 / kQ8Block;
                for (int64_t b = 0; b < depth / kQ8Block; ++b) {
                    _Float16 scale_f16;
                    std::memcpy(&scale_f16, &blocks[b].scale, sizeof scale_f16);
                    const float scale = static_cast<float>(scale_f16);
                    for (int64_t j = 0; j < kQ8Block; j += kLanes) {
                        typename S::i8v q;
                        std::memcpy(&q, blocks[b].q + j, sizeof q);
                        const V f = __builtin_convertvector(q, V) * scale;
                        for (int64_t l = 0; l < kLanes; ++l) panel[(b * kQ8Block + j + l) * kRows + r] = f[l];
                    }
                }
                continue;
            }
            const _Float16* src = reinterpret_cast<const _Float16*>(row) + k0;
            int64_t k = 0;
            for (; k + kLanes <= depth; k += kLanes) {
                typename S::f16v h;
                std::memcpy(&h, src + k, sizeof h);
                const V f = __builtin_convertvector(h, V);
                for (int64_t l = 0; l < kLanes; ++l) panel[(k + l) * kRows + r] = f[l];
            }
            for (; k < depth; ++k) panel[k * kRows + r] = static_cast<float>(src[k]);
        }
    }
}

// Activation columns [0, N) x depth [k0, k0 + depth) as kCols-column panels, each [depth][kCols]
// (columns past N are zero).
template <class S>
STATEKV_ALWAYS_INLINE void pack_columns(const Operands& o, int64_t k0, int64_t depth, float* out) {
    constexpr int64_t kCols = S::kCols;
    for (int64_t n0 = 0; n0 < o.N; n0 += kCols) {
        float* panel = out + n0 * depth;
        for (int64_t c = 0; c < kCols; ++c) {
            if (n0 + c >= o.N) {
                for (int64_t k = 0; k < depth; ++k) panel[k * kCols + c] = 0.0f;
                continue;
            }
            const float* src = reinterpret_cast<const float*>(o.x + static_cast<size_t>(n0 + c) * o.x_col) + k0;
            for (int64_t k = 0; k < depth; ++k) panel[k * kCols + c] = src[k];
        }
    }
}

// Rows [m_begin, m_end) of y, all columns.
template <class S>
STATEKV_ALWAYS_INLINE void multiply_rows(const Operands& o, int64_t m_begin, int64_t m_end, float* wbuf, float* xbuf) {
    using V = typename S::f32v;
    constexpr int64_t kLanes = S::kLanes, kRows = S::kVecs * S::kLanes, kCols = S::kCols;
    const int64_t n_padded = (o.N + kCols - 1) / kCols * kCols;
    for (int64_t k0 = 0; k0 < o.K; k0 += S::kDepth) {
        const int64_t depth = std::min(S::kDepth, o.K - k0);
        pack_columns<S>(o, k0, depth, xbuf);
        for (int64_t b0 = m_begin; b0 < m_end; b0 += kBlockRows) {
            const int64_t rows = std::min(kBlockRows, m_end - b0);
            pack_weights<S>(o, b0, rows, k0, depth, wbuf);
            for (int64_t n0 = 0; n0 < n_padded; n0 += kCols) {
                const float* xp = xbuf + n0 * depth;
                const int64_t cols = std::min(kCols, o.N - n0);
                for (int64_t p = 0; p < rows; p += kRows) {
                    V acc[kCols][S::kVecs];
                    tile<S>(wbuf + p * depth, xp, depth, acc);
                    const int64_t m = b0 + p, valid = std::min(kRows, std::min(rows - p, o.M - m));
                    for (int64_t c = 0; c < cols; ++c) {
                        float* out = o.y + (n0 + c) * o.M + m;
                        for (int64_t u = 0; u * kLanes < valid; ++u) {
                            const int64_t nu = std::min<int64_t>(kLanes, valid - u * kLanes);
                            if (k0 > 0) acc[c][u] += vec::load_up_to<V>(out + u * kLanes, nu);
                            vec::store_up_to(out + u * kLanes, acc[c][u], nu);
                        }
                    }
                }
            }
        }
    }
}

// One entry point per width, each compiled for the targets that run it well: eight lanes for
// AVX2 and the baseline; sixteen for AVX-512 (x86-64-v4), plus the AVX2 and baseline clones only so
// that STATEKV_GEMM_LANES=16 runs (and is tested) on any machine.
STATEKV_CPU_CLONES
void multiply_rows_8(const Operands& o, int64_t m_begin, int64_t m_end, float* wbuf, float* xbuf) {
    multiply_rows<Width8>(o, m_begin, m_end, wbuf, xbuf);
}
STATEKV_CPU_CLONES_WIDE
void multiply_rows_16(const Operands& o, int64_t m_begin, int64_t m_end, float* wbuf, float* xbuf) {
    multiply_rows<Width16>(o, m_begin, m_end, wbuf, xbuf);
}

// Task ith of nth: an even share of the kRows-row panels (every task packs all columns for itself).
template <class S>
void matmul_task(ggml_tensor* dst, int ith, int nth, void*) {
    constexpr int64_t kRows = S::kVecs * S::kLanes;
    const ggml_tensor* w = dst->src[0];
    const ggml_tensor* x = dst->src[1];
    const Operands o{static_cast<const char*>(w->data), w->type == GGML_TYPE_Q8_0, w->nb[1], static_cast<const char*>(x->data), x->nb[1],
                     static_cast<float*>(dst->data), w->ne[0], w->ne[1], ggml_nrows(x)};
    const int64_t panels = (o.M + kRows - 1) / kRows;
    const int64_t m_begin = panels * ith / nth * kRows, m_end = std::min(o.M, panels * (ith + 1) / nth * kRows);
    if (m_begin >= m_end) return;
    const int64_t depth = std::min(S::kDepth, o.K);
    std::vector<float> wbuf(static_cast<size_t>(kBlockRows * depth));
    std::vector<float> xbuf(static_cast<size_t>((o.N + S::kCols - 1) / S::kCols * S::kCols * depth));
    if constexpr (S::kLanes == 16)
        multiply_rows_16(o, m_begin, m_end, wbuf.data(), xbuf.data());
    else
        multiply_rows_8(o, m_begin, m_end, wbuf.data(), xbuf.data());
}

// Sixteen lanes where the CPU and the OS run AVX-512 (the x86-64-v4 set; libgcc's check includes
// the OS's saving of the AVX-512 registers), else eight.
int native_lanes() {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512cd") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return 16;
#endif
    return 8;
}

}  // namespace

ggml_tensor* packed_matmul(GraphBuilder& g, ggml_tensor* w, ggml_tensor* x) {
    ggml_context* ctx = g.ctx();
    // Weights in one of ggml's repacking buffers (Q8_0 on ARM CPUs with dot-product instructions)
    // are not in the plain layout: they stay with ggml, as does anything not yet allocated. A view
    // (a reshaped conv kernel) gets its buffer when the graph is allocated: its source's tells.
    const ggml_tensor* owner = w->view_src ? w->view_src : w;
    const bool plain = owner->buffer && ggml_backend_buffer_is_host(owner->buffer);
    const bool packed = g.on_cpu && plain && (w->type == GGML_TYPE_F16 || w->type == GGML_TYPE_Q8_0) &&
                        ggml_is_contiguous(w) && w->ne[2] == 1 && w->ne[3] == 1 && x->type == GGML_TYPE_F32 &&
                        ggml_is_contiguous(x) && x->ne[0] == w->ne[0] && ggml_nrows(x) >= kMinColumns;
    if (!packed) return ggml_mul_mat(ctx, w, x);
    ggml_tensor* args[2] = {w, x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], x->ne[2], x->ne[3], args, 2,
                          packed_matmul_lanes() == 16 ? matmul_task<Width16> : matmul_task<Width8>, GGML_N_TASKS_MAX, nullptr);
}

int packed_matmul_lanes() {
    // Read at every graph build, so that a benchmark or a test can compare the widths in one process.
    const char* forced = std::getenv("STATEKV_GEMM_LANES");
    if (forced && *forced) {
        if (std::strcmp(forced, "8") == 0 || std::strcmp(forced, "16") == 0) return std::atoi(forced);
        throw ModelError(std::string("STATEKV_GEMM_LANES=") + forced + ": expected 8 or 16 (or unset: the CPU's widest)");
    }
    static const int native = native_lanes();
    return native;
}

}  // namespace statekv
