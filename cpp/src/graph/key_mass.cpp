#include "graph/key_mass.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "graph/vec_math.h"

namespace statekv {
namespace {

using vec::f32x8;
using vec::kLanes;

// Independent partial sums: each covers a contiguous range of (query, KV group) rows and fills
// its own [n_kv, H_kv] slice, so no two threads write the same memory whatever their number; the
// slices are added afterwards. 32 keeps up to 32 threads busy on one step.
constexpr int64_t kPartials = 32;
// Keys per block of the transposed key layout: two vectors.
constexpr int64_t kBlock = 2 * kLanes;

// Scores of R query heads (pre-scaled rows qs[r * d ...]) against all keys of one KV head:
// out[r * n_kv + j] = qs[r] . k_j + mask[j]. kb holds the keys in blocks of 16, transposed within
// a block ([n_kv / 16][d][16]), so a block is two vectors per dimension, read in order from one
// contiguous 4 KB, and each dimension is one multiply-add per vector and head.
template <int R>
STATEKV_ALWAYS_INLINE void score_rows(const float* kb, int64_t n_kv, int64_t d, const float* qs, const float* mask,
                                      float* out) {
    for (int64_t j = 0; j < n_kv; j += kBlock) {
        const float* block = kb + j * d;
        f32x8 acc[R][2];
        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = vec::splat(0.0f);
        for (int64_t c = 0; c < d; ++c) {
            const f32x8 k0 = vec::load(block + c * kBlock), k1 = vec::load(block + c * kBlock + kLanes);
            for (int r = 0; r < R; ++r) {
                const float qv = qs[r * d + c];
                acc[r][0] += qv * k0;
                acc[r][1] += qv * k1;
            }
        }
        // The last block's padding keys are computed and not stored.
        const int64_t n0 = std::min<int64_t>(kLanes, n_kv - j), n1 = std::min<int64_t>(kLanes, n_kv - j - n0);
        const f32x8 m0 = vec::load_up_to(mask + j, n0);
        const f32x8 m1 = n1 > 0 ? vec::load_up_to(mask + j + kLanes, n1) : vec::splat(0.0f);
        for (int r = 0; r < R; ++r) {
            vec::store_up_to(out + r * n_kv + j, acc[r][0] + m0, n0);
            if (n1 > 0) vec::store_up_to(out + r * n_kv + j + kLanes, acc[r][1] + m1, n1);
        }
    }
}

// In place: row <- exp(row - max(row)), masked keys exactly 0; returns 1 / the row's sum.
STATEKV_ALWAYS_INLINE float exp_row(float* row, int64_t n) {
    f32x8 mx = vec::splat(-INFINITY);
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
        const f32x8 v = vec::load(row + j);
        mx = v > mx ? v : mx;
    }
    float m = vec::max_lane(mx);
    for (; j < n; ++j) m = std::max(m, row[j]);
    // Masked keys (-inf, or the finite mask's -65504) get exactly 0, as in a softmax.
    const f32x8 vm = vec::splat(m), cut = vec::splat(-80.0f), zero = vec::splat(0.0f);
    f32x8 sum = zero;
    for (j = 0; j < n; j += kLanes) {
        const int64_t nj = std::min<int64_t>(kLanes, n - j);
        const f32x8 t = vec::load_up_to(row + j, nj) - vm;
        f32x8 e = vec::exp_clamped(t);
        e = t < cut ? zero : e;
        if (nj < kLanes) {
            for (int64_t l = nj; l < kLanes; ++l) e[l] = 0.0f;
        }
        sum += e;
        vec::store_up_to(row + j, e, nj);
    }
    return static_cast<float>(1.0 / vec::sum_lanes(sum));
}

// out_r[c0 .. c0 + 8 NV) = inv[r] * sum_j e[r * n_kv + j] v_j[c0 ..] for R heads: the attention
// output from the normalized rows, values [n_kv][d] read in order, NV vectors of each.
template <int R, int NV>
STATEKV_ALWAYS_INLINE void weigh_values(const float* v, int64_t n_kv, int64_t d, int64_t c0, const float* e,
                                        const float* inv, float* const* out) {
    f32x8 acc[R][NV];
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < NV; ++u) acc[r][u] = vec::splat(0.0f);
    for (int64_t j = 0; j < n_kv; ++j) {
        const float* vj = v + j * d + c0;
        f32x8 x[NV];
        for (int u = 0; u < NV; ++u) x[u] = vec::load(vj + u * kLanes);
        for (int r = 0; r < R; ++r) {
            const float p = e[r * n_kv + j];
            for (int u = 0; u < NV; ++u) acc[r][u] += p * x[u];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int u = 0; u < NV; ++u) vec::store(out[r] + c0 + u * kLanes, inv[r] * acc[r][u]);
}

template <int R>
STATEKV_ALWAYS_INLINE void weigh_values_all(const float* v, int64_t n_kv, int64_t d, const float* e, const float* inv,
                                            float* const* out) {
    int64_t c0 = 0;
    for (; c0 + 4 * kLanes <= d; c0 += 4 * kLanes) weigh_values<R, 4>(v, n_kv, d, c0, e, inv, out);
    switch ((d - c0) / kLanes) {
        case 3: weigh_values<R, 3>(v, n_kv, d, c0, e, inv, out); break;
        case 2: weigh_values<R, 2>(v, n_kv, d, c0, e, inv, out); break;
        case 1: weigh_values<R, 1>(v, n_kv, d, c0, e, inv, out); break;
        default: break;
    }
    // A head size that is not a multiple of 8 (no supported model has one): its last dimensions.
    for (int64_t c = c0 + (d - c0) / kLanes * kLanes; c < d; ++c) {
        for (int r = 0; r < R; ++r) {
            double sum = 0.0;
            for (int64_t j = 0; j < n_kv; ++j) sum += e[r * n_kv + j] * v[j * d + c];
            out[r][c] = static_cast<float>(inv[r] * sum);
        }
    }
}

struct StepRowsArgs {
    const ggml_tensor* q;     // [d, H, n_q] F32, pre-scaled
    const float* kb;          // [16, d, n_kv / 16 rounded up, H_kv] F32 contiguous
    const ggml_tensor* mask;  // [n_kv, n_q] F32
    const float* v;           // [d, n_kv, H_kv] F32 contiguous
    float* out;               // [d, H, n_q]: the attention output
    int64_t d, H, n_q, n_kv, H_kv, G;
};

// Rows [r0, r1) of (query i, KV group g) = (r / H_kv, r % H_kv): their attention output, and their
// probabilities added into mass [H_kv][n_kv] unless mass is null.
STATEKV_CPU_CLONES
void attend_rows(const StepRowsArgs& a, int64_t r0, int64_t r1, float* mass, float* buf, float* qs) {
    const int64_t d = a.d, n_kv = a.n_kv, G = a.G;
    std::vector<float> inv(static_cast<size_t>(G));
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t i = r / a.H_kv, g = r % a.H_kv;
        for (int64_t h = 0; h < G; ++h) {
            const char* qrow = static_cast<const char*>(a.q->data) + (g * G + h) * a.q->nb[1] + i * a.q->nb[2];
            std::memcpy(qs + h * d, qrow, static_cast<size_t>(d) * sizeof(float));
        }
        const float* kb = a.kb + g * d * ((n_kv + kBlock - 1) / kBlock * kBlock);
        const float* mask = reinterpret_cast<const float*>(static_cast<const char*>(a.mask->data) + i * a.mask->nb[1]);
        for (int64_t h0 = 0; h0 < G; h0 += 4) {
            const float* qh = qs + h0 * d;
            float* out = buf + h0 * n_kv;
            switch (std::min<int64_t>(4, G - h0)) {
                case 4: score_rows<4>(kb, n_kv, d, qh, mask, out); break;
                case 3: score_rows<3>(kb, n_kv, d, qh, mask, out); break;
                case 2: score_rows<2>(kb, n_kv, d, qh, mask, out); break;
                default: score_rows<1>(kb, n_kv, d, qh, mask, out); break;
            }
        }
        for (int64_t h = 0; h < G; ++h) inv[static_cast<size_t>(h)] = exp_row(buf + h * n_kv, n_kv);
        const float* v = a.v + g * n_kv * d;
        for (int64_t h0 = 0; h0 < G; h0 += 2) {
            float* first = a.out + (i * a.H + g * G + h0) * d;
            float* out[2] = {first, G - h0 >= 2 ? first + d : first};
            if (G - h0 >= 2) weigh_values_all<2>(v, n_kv, d, buf + h0 * n_kv, inv.data() + h0, out);
            else weigh_values_all<1>(v, n_kv, d, buf + h0 * n_kv, inv.data() + h0, out);
        }
        if (!mass) continue;
        float* m = mass + g * n_kv;
        for (int64_t j = 0; j < n_kv; j += kLanes) {
            const int64_t nj = std::min<int64_t>(kLanes, n_kv - j);
            f32x8 acc = vec::load_up_to(m + j, nj);
            for (int64_t h = 0; h < G; ++h) acc += inv[static_cast<size_t>(h)] * vec::load_up_to(buf + h * n_kv + j, nj);
            vec::store_up_to(m + j, acc, nj);
        }
    }
}

// dst [16 * d, n_blocks, H_kv] from keys k [d, n_kv, H_kv] (F32): block b of KV head g holds
// keys 16 b .. 16 b + 15 transposed (dimension-major), zeros past the last key.
void block_keys_task(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* k = dst->src[0];
    const int64_t d = k->ne[0], n_kv = k->ne[1], n_blocks = dst->ne[1], H_kv = dst->ne[2];
    for (int64_t t = ith; t < n_blocks * H_kv; t += nth) {
        const int64_t b = t % n_blocks, g = t / n_blocks;
        float* out = reinterpret_cast<float*>(static_cast<char*>(dst->data) + b * dst->nb[1] + g * dst->nb[2]);
        for (int64_t l = 0; l < kBlock; ++l) {
            const int64_t j = b * kBlock + l;
            if (j >= n_kv) {
                for (int64_t c = 0; c < d; ++c) out[c * kBlock + l] = 0.0f;
                continue;
            }
            const float* key = reinterpret_cast<const float*>(static_cast<const char*>(k->data) + j * k->nb[1] + g * k->nb[2]);
            for (int64_t c = 0; c < d; ++c) out[c * kBlock + l] = key[c];
        }
    }
}

// The kernel's operands as a task sees them: dst->src = (scaled queries, blocked keys, mask, values).
StepRowsArgs step_rows_args(ggml_tensor* dst) {
    const ggml_tensor* q = dst->src[0];
    const ggml_tensor* v = dst->src[3];
    return {q, static_cast<const float*>(dst->src[1]->data), dst->src[2], static_cast<const float*>(v->data),
            static_cast<float*>(dst->data), q->ne[0], q->ne[1], q->ne[2], v->ne[1], v->ne[2], q->ne[1] / v->ne[2]};
}

// dst: the output [d, H, n_q], then the partial masses [n_kv, H_kv, n_part], flat. Task ith handles
// the rows of partials ith, ith + nth, ...
void attention_task(ggml_tensor* dst, int ith, int nth, void* n_part_arg) {
    const int64_t n_part = reinterpret_cast<intptr_t>(n_part_arg);
    const StepRowsArgs a = step_rows_args(dst);
    const int64_t rows = a.n_q * a.H_kv;
    float* masses = a.out + a.d * a.H * a.n_q;
    std::vector<float> buf(static_cast<size_t>(a.G * a.n_kv)), qs(static_cast<size_t>(a.G * a.d));
    for (int64_t p = ith; p < n_part; p += nth) {
        float* mass = masses + p * a.n_kv * a.H_kv;
        std::fill(mass, mass + a.n_kv * a.H_kv, 0.0f);
        attend_rows(a, rows * p / n_part, rows * (p + 1) / n_part, mass, buf.data(), qs.data());
    }
}

// dst: the output [d, H, n_q] alone; task ith handles an nth of the (query, KV group) rows.
void attention_only_task(ggml_tensor* dst, int ith, int nth, void*) {
    const StepRowsArgs a = step_rows_args(dst);
    const int64_t rows = a.n_q * a.H_kv;
    std::vector<float> buf(static_cast<size_t>(a.G * a.n_kv)), qs(static_cast<size_t>(a.G * a.d));
    attend_rows(a, rows * ith / nth, rows * (ith + 1) / nth, nullptr, buf.data(), qs.data());
}

// The kernel's operands, in the order its tasks read them (dst->src[0..3]): the queries scaled,
// the keys widened and laid out in blocks, the mask's rows [row0, row0 + n_q) widened (once per
// graph), the values widened (keys and values once per layer).
std::array<ggml_tensor*, 4> kernel_operands(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v,
                                             ggml_tensor* mask, int64_t row0, float scale) {
    ggml_context* ctx = g.ctx();
    const int64_t d = q->ne[0], n_q = q->ne[2], n_kv = k->ne[1], H_kv = k->ne[2];
    ggml_tensor* k32 = k->type == GGML_TYPE_F32 ? k : ggml_cast(ctx, k, GGML_TYPE_F32);
    ggml_tensor* kb = ggml_custom_4d(ctx, GGML_TYPE_F32, kBlock * d, (n_kv + kBlock - 1) / kBlock, H_kv, 1, &k32, 1,
                                     block_keys_task, GGML_N_TASKS_MAX, nullptr);
    // The values are read as one contiguous [d, n_kv] block per KV head.
    ggml_tensor* v32 = v->type != GGML_TYPE_F32 ? ggml_cast(ctx, v, GGML_TYPE_F32) : ggml_is_contiguous(v) ? v : ggml_cont(ctx, v);
    ggml_tensor* mask32 = g.shared_input(
        "f32 of " + std::string(ggml_get_name(mask)) + " " + std::to_string(reinterpret_cast<uintptr_t>(mask)) + " rows " +
            std::to_string(row0) + ":" + std::to_string(n_q),
        [&] {
            ggml_tensor* rows = row0 == 0 && n_q == mask->ne[1]
                                    ? mask
                                    : ggml_view_2d(ctx, mask, mask->ne[0], n_q, mask->nb[1], row0 * mask->nb[1]);
            return ggml_cast(ctx, rows, GGML_TYPE_F32);
        });
    return {ggml_scale(ctx, q, scale), kb, mask32, v32};
}

}  // namespace

ggml_tensor* attention_f32(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, ggml_tensor* mask,
                           int64_t mask_row0, float scale) {
    std::array<ggml_tensor*, 4> args = kernel_operands(g, q, k, v, mask, mask_row0, scale);
    return ggml_custom_4d(g.ctx(), GGML_TYPE_F32, q->ne[0] * q->ne[1], q->ne[2], 1, 1, args.data(), 4,
                          attention_only_task, GGML_N_TASKS_MAX, nullptr);
}

ScoredAttention attention_with_key_mass(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, ggml_tensor* mask,
                                        float scale) {
    ggml_context* ctx = g.ctx();
    const int64_t d = q->ne[0], H = q->ne[1], n_q = q->ne[2], n_kv = k->ne[1], H_kv = k->ne[2];
    std::array<ggml_tensor*, 4> args = kernel_operands(g, q, k, v, mask, 0, scale);
    const int64_t n_part = std::min<int64_t>(kPartials, n_q * H_kv), n_out = d * H * n_q;
    ggml_tensor* both = ggml_custom_4d(ctx, GGML_TYPE_F32, n_out + n_kv * H_kv * n_part, 1, 1, 1, args.data(), 4, attention_task,
                                       GGML_N_TASKS_MAX, reinterpret_cast<void*>(static_cast<intptr_t>(n_part)));
    ggml_tensor* out = ggml_view_2d(ctx, both, d * H, n_q, d * H * sizeof(float), 0);
    ggml_tensor* parts = ggml_view_2d(ctx, both, n_kv * H_kv, n_part, n_kv * H_kv * sizeof(float), n_out * sizeof(float));
    // Sum of the partial masses: out_prod with a column of ones contracts them in one pass.
    ggml_tensor* ones = g.shared_input("ones 1 " + std::to_string(n_part), [&] {
        return g.input_f32(std::vector<float>(static_cast<size_t>(n_part), 1.0f), {1, n_part}, "ones");
    });
    return {out, ggml_reshape_2d(ctx, ggml_out_prod(ctx, parts, ones), n_kv, H_kv)};
}

}  // namespace statekv
