#include "graph/attention.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>

#include "graph/key_mass.h"

namespace statekv {

ggml_tensor* causal_mask(GraphBuilder& g, const std::vector<KeyRun>& keys, int64_t q0, int64_t n_q, bool finite,
                         bool null_if_all_visible, int64_t window, int64_t batch_first) {
    const std::vector<int32_t>& blocks = g.batch_blocks();
    if (batch_first < 0) batch_first = q0;
    int64_t n_kv = 0, last = -1, first = INT64_MAX;
    std::string key = "kq_mask " + std::to_string(q0) + " " + std::to_string(n_q) + " w" + std::to_string(window) +
                      (finite ? " finite" : "") + (blocks.empty() ? "" : " b" + std::to_string(batch_first));
    for (const KeyRun& r : keys) {
        n_kv += r.n;
        if (r.n > 0) last = std::max(last, r.begin + r.n - 1), first = std::min(first, r.begin);
        key += " " + std::to_string(r.begin) + ":" + std::to_string(r.n);
    }
    if (null_if_all_visible && last <= q0 && (last < 0 || key_visible(first, q0 + n_q - 1, window))) return nullptr;
    // Block of the token with index i, 0 outside the batch or when causal.
    const int64_t n_batch = static_cast<int64_t>(blocks.size());
    const auto block_of = [&](int64_t i) {
        return i >= batch_first && i - batch_first < n_batch ? blocks[static_cast<size_t>(i - batch_first)] : 0;
    };
    return g.shared_input(key, [&] {
        const uint16_t visible = ggml_fp32_to_fp16(0.0f);
        const uint16_t hidden = ggml_fp32_to_fp16(finite ? -65504.0f : -INFINITY);
        std::vector<uint16_t> m(static_cast<size_t>(n_kv * n_q));
        for (int64_t i = 0; i < n_q; ++i) {
            uint16_t* row = &m[static_cast<size_t>(i * n_kv)];
            const int64_t q = q0 + i;
            const int32_t qb = block_of(q);
            for (const KeyRun& r : keys) {
                for (int64_t t = 0; t < r.n; ++t) {
                    const int64_t k = r.begin + t;
                    const bool same_block = qb > 0 && block_of(k) == qb && (window <= 0 || q - k < window);
                    *row++ = key_visible(k, q, window) || same_block ? visible : hidden;
                }
            }
        }
        return g.input(GGML_TYPE_F16, {n_kv, n_q}, m.data(), "kq_mask");
    });
}

ggml_tensor* fused_attention(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, ggml_tensor* mask,
                             float scale) {
    // ggml's CPU flash attention takes its tiled kernel from this many query rows on.
    constexpr int64_t kTileRows = 64;
    ggml_context* ctx = g.ctx();
    const int64_t n_q = q->ne[2], n_tiled = n_q / kTileRows * kTileRows;
    if (!g.on_cpu || !mask || n_tiled == 0 || n_tiled == n_q) return flash_attention(ctx, q, k, v, mask, scale);
    ggml_tensor* q_tiled = ggml_view_3d(ctx, q, q->ne[0], q->ne[1], n_tiled, q->nb[1], q->nb[2], 0);
    ggml_tensor* q_rest = ggml_view_3d(ctx, q, q->ne[0], q->ne[1], n_q - n_tiled, q->nb[1], q->nb[2], n_tiled * q->nb[2]);
    ggml_tensor* mask_tiled = ggml_view_2d(ctx, mask, mask->ne[0], n_tiled, mask->nb[1], 0);
    return ggml_concat(ctx, flash_attention(ctx, q_tiled, k, v, mask_tiled, scale),
                       attention_f32(g, q_rest, k, v, mask, n_tiled, scale), 1);
}

ggml_tensor* CausalSelfAttention::attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) {
    const int64_t n = q->ne[2];
    ggml_context* ctx = g.ctx();
    ggml_tensor* kp = ggml_permute(ctx, k, 0, 2, 1, 3);
    ggml_tensor* vp = ggml_permute(ctx, v, 0, 2, 1, 3);
    const int64_t window = windows_.empty() ? 0 : windows_[static_cast<size_t>(layer)];
    return fused_attention(g, q, kp, vp, causal_mask(g, {{0, n}}, 0, n, false, false, window), scale_);
}

namespace {

std::vector<KeyRun> runs_of(const std::vector<KVSegment>& segments) {
    std::vector<KeyRun> runs;
    for (const KVSegment& s : segments) runs.push_back({s.begin, s.n});
    return runs;
}

}  // namespace

ggml_tensor* segmented_attention(GraphBuilder& g, ggml_tensor* q, const std::vector<KVSegment>& segments,
                                 int64_t q0, float scale, int64_t window) {
    ggml_context* ctx = g.ctx();
    const int64_t n_q = q->ne[2];
    if (segments.size() == 1) {
        const KVSegment& s = segments[0];
        return fused_attention(g, q, s.k, s.v, causal_mask(g, {{s.begin, s.n}}, q0, n_q, false, true, window), scale);
    }
    if (!ggml_is_quantized(segments[0].k->type) && !ggml_is_quantized(segments[0].v->type)) {
        // Float caches: the segments' keys and values gathered into one contiguous K/V for one
        // fused attention. The copy reads each key once, far cheaper than the explicit scores a
        // log-sum-exp merge of per-segment outputs needs (and it keeps a step's cost constant
        // in window mode, whose prefix and recent steps are two ranges of D).
        ggml_tensor* k = segments[0].k;
        ggml_tensor* v = segments[0].v;
        for (size_t c = 1; c < segments.size(); ++c) {
            k = ggml_concat(ctx, k, segments[c].k, 1);
            v = ggml_concat(ctx, v, segments[c].v, 1);
        }
        // The queries' own keys may be among them: a causal mask then.
        ggml_tensor* mask = causal_mask(g, runs_of(segments), q0, n_q, false, true, window);
        return fused_attention(g, q, k, v, mask, scale);
    }
    // Quantized caches (concat cannot cut their blocks): one fused attention per segment, merged
    // as out = sum_c softmax_c(lse)_c * attention_c, with lse_c = log sum_j exp(scale * q.k_j + mask).
    ggml_tensor* qp = ggml_permute(ctx, q, 0, 2, 1, 3);  // [d, n_q, H]
    std::vector<ggml_tensor*> outs, lses;
    for (const KVSegment& s : segments) {
        ggml_tensor* mask = causal_mask(g, {{s.begin, s.n}}, q0, n_q, true, true, window);
        ggml_tensor* o = ggml_flash_attn_ext(ctx, qp, s.k, s.v, mask, scale, 0.0f, 0.0f);  // [d, H, n_q]
        ggml_flash_attn_ext_set_prec(o, GGML_PREC_F32);
        outs.push_back(o);
        ggml_tensor* sc = ggml_scale(ctx, ggml_mul_mat(ctx, s.k, qp), scale);  // [n, n_q, H]
        if (mask) sc = ggml_add(ctx, sc, ggml_cast(ctx, mask, GGML_TYPE_F32));
        ggml_tensor* mx = ggml_pool_1d(ctx, sc, GGML_OP_POOL_MAX, static_cast<int>(s.n), static_cast<int>(s.n), 0);
        ggml_tensor* se = ggml_sum_rows(ctx, ggml_exp(ctx, ggml_sub(ctx, sc, mx)));
        lses.push_back(ggml_add(ctx, ggml_log(ctx, se), mx));  // [1, n_q, H]
    }
    ggml_tensor* all = lses[0];
    for (size_t c = 1; c < lses.size(); ++c) all = ggml_concat(ctx, all, lses[c], 0);
    ggml_tensor* w = ggml_soft_max(ctx, all);  // [n_seg, n_q, H]
    ggml_tensor* out = nullptr;
    for (size_t c = 0; c < outs.size(); ++c) {
        ggml_tensor* wc = ggml_view_3d(ctx, w, 1, n_q, w->ne[2], w->nb[1], w->nb[2], c * w->nb[0]);
        wc = ggml_cont(ctx, ggml_permute(ctx, wc, 0, 2, 1, 3));  // [1, H, n_q], as the outputs
        ggml_tensor* term = ggml_mul(ctx, outs[c], wc);
        out = out ? ggml_add(ctx, out, term) : term;
    }
    return ggml_reshape_2d(ctx, out, out->ne[0] * out->ne[1], out->ne[2]);
}

ScoredAttention scored_attention(GraphBuilder& g, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int64_t n_visible,
                                 float scale, size_t max_probability_bytes) {
    ggml_context* ctx = g.ctx();
    const int64_t d = q->ne[0], H = q->ne[1], n_q = q->ne[2];
    const int64_t n_kv = k->ne[1], H_kv = k->ne[2], G = H / H_kv;
    if (g.on_cpu) {
        // Output and scores from statekv's own kernel in one pass, no probability matrix.
        return attention_with_key_mass(g, q, k, v, causal_mask(g, {{0, n_kv}}, n_visible, n_q, false, false, 0, n_visible),
                                       scale);
    }
    // Other devices: ggml's own ops, the probabilities explicit, in tiles of queries.
    const int64_t per_query = n_kv * H * int64_t(sizeof(float)) * 2;  // scores and probabilities
    const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(n_q, int64_t(max_probability_bytes) / per_query));
    ggml_tensor* out = nullptr;
    ggml_tensor* scores = nullptr;
    for (int64_t i0 = 0; i0 < n_q; i0 += tile) {
        const int64_t nt = std::min(tile, n_q - i0);
        // Query i (0-based in the step) sees the n_visible carried keys and step keys 0..i: keys
        // numbered 0.. in order, the tile's queries numbered from n_visible + i0.
        ggml_tensor* mask = causal_mask(g, {{0, n_kv}}, n_visible + i0, nt, false, false, 0, n_visible);
        ggml_tensor* qt = ggml_view_3d(ctx, q, d, H, nt, q->nb[1], q->nb[2], i0 * q->nb[2]);
        // The output comes from the fused kernel (one pass, no probability matrix); the explicit
        // probabilities below exist only to be reduced into the key scores.
        ggml_tensor* o = flash_attention(ctx, qt, k, v, mask, scale);  // [d * H, nt]
        out = out ? ggml_concat(ctx, out, o, 1) : o;
        // [d, nt, H], contiguous and in the keys' type: one batched GEMM per head.
        ggml_tensor* qp = ggml_cast(ctx, ggml_permute(ctx, qt, 0, 2, 1, 3), k->type);
        ggml_tensor* p = ggml_soft_max_ext(ctx, ggml_mul_mat(ctx, k, qp), mask, scale, 0.0f);  // [n_kv, nt, H]
        // Sum over the tile's queries and the G heads of each KV group. The heads of a group are
        // adjacent, so p is [n_kv, nt*G, H_kv] as it lies; out_prod with a column of ones
        // contracts its rows in one streaming pass (no transposed copy of p).
        ggml_tensor* p3 = ggml_reshape_3d(ctx, p, n_kv, nt * G, H_kv);
        ggml_tensor* ones = g.shared_input("ones " + std::to_string(nt * G) + " " + std::to_string(H_kv), [&] {
            return g.input_f32(std::vector<float>(static_cast<size_t>(nt * G * H_kv), 1.0f), {1, nt * G, H_kv}, "ones");
        });
        ggml_tensor* s = ggml_out_prod(ctx, p3, ones);  // [n_kv, 1, H_kv]
        scores = scores ? ggml_add(ctx, scores, s) : s;
    }
    return {out, ggml_reshape_2d(ctx, scores, n_kv, H_kv)};
}

}  // namespace statekv
