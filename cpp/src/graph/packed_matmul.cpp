#include "graph/packed_matmul.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ggml-backend.h"
#include "graph/vec_math.h"

namespace statekv {
namespace {

using vec::f32x8;
using vec::kLanes;

// Register tile: kRows weight rows (three vectors) by kCols activation columns: 12 accumulators,
// three weight vectors and a broadcast, within the 16 vector registers of AVX2. Measured on the
// Zen 1 machine (K = 1,024, M = 4,096, N = 1,025, 2 threads): 24 x 4 42-46 GFLOP/s, 32 x 3 41-47,
// 16 x 6 35-40 (two broadcasts more per step), 8 x 12 23.
constexpr int64_t kVecs = 3;
constexpr int64_t kRows = kVecs * kLanes;
constexpr int64_t kCols = 4;
// Depth of one packed block: a 24-row weight panel (24 KB) and a 4-column activation panel
// (4 KB) fit a 32 KB L1 together.
constexpr int64_t kDepth = 256;
// Weight rows per packed block (a multiple of kRows): 192 x 256 F32 = 192 KB, inside a 512 KB L2.
constexpr int64_t kBlockRows = 192;
// Fewer columns than this go to ggml (packing would not pay for itself on a decode step).
constexpr int64_t kMinColumns = 32;

typedef _Float16 f16x8 __attribute__((vector_size(16)));
typedef int8_t i8x8 __attribute__((vector_size(8)));

// ggml's Q8_0 block: 32 int8 values and their F16 scale.
constexpr int64_t kQ8Block = 32;
struct Q8Block {
    _Float16 scale;
    int8_t q[kQ8Block];
};
static_assert(sizeof(Q8Block) == 34, "ggml's block_q8_0 is 34 bytes");

// acc[c] (rows r .. r + kRows of column c) += sum over depth of wp[k][kRows] * xp[k][c].
STATEKV_ALWAYS_INLINE void tile(const float* wp, const float* xp, int64_t depth, f32x8 (&acc)[kCols][kVecs]) {
#pragma GCC unroll 8
    for (int64_t c = 0; c < kCols; ++c)
#pragma GCC unroll 4
        for (int64_t u = 0; u < kVecs; ++u) acc[c][u] = vec::splat(0.0f);
    for (int64_t k = 0; k < depth; ++k) {
        f32x8 w[kVecs];
#pragma GCC unroll 4
        for (int64_t u = 0; u < kVecs; ++u) w[u] = vec::load(wp + k * kRows + u * kLanes);
        // Unrolled so that the accumulators live in registers.
#pragma GCC unroll 8
        for (int64_t c = 0; c < kCols; ++c) {
            const float xv = xp[k * kCols + c];
#pragma GCC unroll 4
            for (int64_t u = 0; u < kVecs; ++u) acc[c][u] += w[u] * xv;
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
STATEKV_ALWAYS_INLINE void pack_weights(const Operands& o, int64_t m0, int64_t rows, int64_t k0, int64_t depth, float* out) {
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
                // k0 and depth are multiples of 32 (K is, and so are the 256-deep blocks).
                const Q8Block* blocks = reinterpret_cast<const Q8Block*>(row) + k0 / kQ8Block;
                for (int64_t b = 0; b < depth / kQ8Block; ++b) {
                    _Float16 scale_f16;
                    std::memcpy(&scale_f16, &blocks[b].scale, sizeof scale_f16);
                    const float scale = static_cast<float>(scale_f16);
                    for (int64_t j = 0; j < kQ8Block; j += kLanes) {
                        i8x8 q;
                        std::memcpy(&q, blocks[b].q + j, sizeof q);
                        const f32x8 f = __builtin_convertvector(q, f32x8) * scale;
                        for (int64_t l = 0; l < kLanes; ++l) panel[(b * kQ8Block + j + l) * kRows + r] = f[l];
                    }
                }
                continue;
            }
            const _Float16* src = reinterpret_cast<const _Float16*>(row) + k0;
            int64_t k = 0;
            for (; k + kLanes <= depth; k += kLanes) {
                f16x8 h;
                std::memcpy(&h, src + k, sizeof h);
                const f32x8 f = __builtin_convertvector(h, f32x8);
                for (int64_t l = 0; l < kLanes; ++l) panel[(k + l) * kRows + r] = f[l];
            }
            for (; k < depth; ++k) panel[k * kRows + r] = static_cast<float>(src[k]);
        }
    }
}

// Activation columns [0, N) x depth [k0, k0 + depth) as kCols-column panels, each [depth][kCols]
// (columns past N are zero).
STATEKV_ALWAYS_INLINE void pack_columns(const Operands& o, int64_t k0, int64_t depth, float* out) {
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
STATEKV_CPU_CLONES
void multiply_rows(const Operands& o, int64_t m_begin, int64_t m_end, std::vector<float>& wbuf, std::vector<float>& xbuf) {
    const int64_t n_padded = (o.N + kCols - 1) / kCols * kCols;
    for (int64_t k0 = 0; k0 < o.K; k0 += kDepth) {
        const int64_t depth = std::min(kDepth, o.K - k0);
        pack_columns(o, k0, depth, xbuf.data());
        for (int64_t b0 = m_begin; b0 < m_end; b0 += kBlockRows) {
            const int64_t rows = std::min(kBlockRows, m_end - b0);
            pack_weights(o, b0, rows, k0, depth, wbuf.data());
            for (int64_t n0 = 0; n0 < n_padded; n0 += kCols) {
                const float* xp = xbuf.data() + n0 * depth;
                const int64_t cols = std::min(kCols, o.N - n0);
                for (int64_t p = 0; p < rows; p += kRows) {
                    f32x8 acc[kCols][kVecs];
                    tile(wbuf.data() + p * depth, xp, depth, acc);
                    const int64_t m = b0 + p, valid = std::min(kRows, std::min(rows - p, o.M - m));
                    for (int64_t c = 0; c < cols; ++c) {
                        float* out = o.y + (n0 + c) * o.M + m;
                        for (int64_t u = 0; u * kLanes < valid; ++u) {
                            const int64_t nu = std::min<int64_t>(kLanes, valid - u * kLanes);
                            if (k0 > 0) acc[c][u] += vec::load_up_to(out + u * kLanes, nu);
                            vec::store_up_to(out + u * kLanes, acc[c][u], nu);
                        }
                    }
                }
            }
        }
    }
}

// Task ith of nth: an even share of the kRows-row panels (every task packs all columns for itself).
void matmul_task(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* w = dst->src[0];
    const ggml_tensor* x = dst->src[1];
    const Operands o{static_cast<const char*>(w->data), w->type == GGML_TYPE_Q8_0, w->nb[1], static_cast<const char*>(x->data), x->nb[1],
                     static_cast<float*>(dst->data), w->ne[0], w->ne[1], ggml_nrows(x)};
    const int64_t panels = (o.M + kRows - 1) / kRows;
    const int64_t m_begin = panels * ith / nth * kRows, m_end = std::min(o.M, panels * (ith + 1) / nth * kRows);
    if (m_begin >= m_end) return;
    const int64_t depth = std::min(kDepth, o.K);
    std::vector<float> wbuf(static_cast<size_t>(kBlockRows * depth));
    std::vector<float> xbuf(static_cast<size_t>((o.N + kCols - 1) / kCols * kCols * depth));
    multiply_rows(o, m_begin, m_end, wbuf, xbuf);
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
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], x->ne[2], x->ne[3], args, 2, matmul_task,
                          GGML_N_TASKS_MAX, nullptr);
}

}  // namespace statekv
