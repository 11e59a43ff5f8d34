// `statekv`: the carried state C holds, per layer and KV head, at most B (key, value) pairs,
// re-selected after every step as the B keys with the largest attention mass from the step's
// queries (docs/DESIGN.md section 1). Scores, top-B selection, re-ordering and gathering all run as
// ggml ops on the device: the host never sees scores.
//
// The rule's variants (SelectionRule, DESIGN.md section 1 "Policy variants") change only what
// the selection ranks: with score_decay d > 0, C also carries each kept key's accumulated score
// (s <- d * s + s_step, ranked instead of s_step); with pin_prefix, the prefix's slots are ranked
// above every other key, so they are always kept. With the defaults the graph is the paper's rule,
// op for op.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "memory/cache_policy.h"
#include "statekv/statekv.h"

namespace statekv {

namespace {

// Storage of C: per layer keys/values [head_dim, capacity, n_head_kv] and the entry index of
// each kept token [1, capacity, n_head_kv] (F32: exact up to 2^24 tokens), plus, with a score
// decay, each kept token's accumulated score (same shape). Sliding-window layers carry their
// window, which D holds: C has no storage for them.
std::shared_ptr<KVStore> new_carried_state(const KVShape& shape, const Backend& backend, ggml_type type, int capacity,
                                           bool with_scores) {
    return std::make_shared<KVStore>(shape, backend, type, capacity, KVStore::Layout::HeadMajor, /*with_ids*/ true,
                                     /*clear*/ true, "the carried state (" + std::to_string(capacity) + " tokens)",
                                     shape.layers(false), with_scores);
}

// A pinned slot's rank: above any attention mass (at most n_q * H per step, divided by 1 - d when
// accumulated), finite so that every backend's top-k orders it like a number.
constexpr float kPinnedRank = 1e30f;

// Stored names of C's tensors of a layer (followed by the layer index), in slot_tensors order.
constexpr const char* kSlotNames[] = {"c.k.", "c.v.", "c.ids.", "c.scores."};

// First n slots of a [x, capacity, heads] tensor.
ggml_tensor* first_slots(ggml_context* ctx, ggml_tensor* t, int64_t n) {
    return ggml_view_3d(ctx, t, t->ne[0], n, t->ne[2], t->nb[1], t->nb[2], 0);
}
ggml_tensor* slots_from(ggml_context* ctx, ggml_tensor* t, int64_t first, int64_t n) {
    return ggml_view_3d(ctx, t, t->ne[0], n, t->ne[2], t->nb[1], t->nb[2], first * t->nb[1]);
}

class StateKVPolicy final : public CachePolicy {
public:
    // C starts small and grows with what it holds (up to B): a budget far above the video's
    // length costs nothing until the tokens are there.
    StateKVPolicy(const KVShape& shape, const Backend& backend, const DetailedCache& d, const SelectionRule& rule,
                  ggml_type type, int capacity = kInitialCapacity)
        : shape_(shape), backend_(backend), d_(d), rule_(rule), budget_(rule.budget), type_(type),
          c_(new_carried_state(shape, backend, type, std::max(1, std::min(budget_, capacity)), decays())) {}

    void begin(GraphBuilder& g, const Batch& b) override {
        if (!b.is_step && n_kept_ + b.n > budget_) {
            throw InputError("the prefix (" + std::to_string(n_kept_ + b.n) + " tokens) exceeds the budget B = " +
                             std::to_string(budget_) + (rule_.pin_prefix ? " (pin_prefix keeps it all in C)" : "") +
                             "; use a larger budget");
        }
        grow(std::min<int64_t>(budget_, n_kept_ + b.n));
        // Entry indices of the batch's tokens, the same for every KV head.
        std::vector<float> ids(static_cast<size_t>(b.n * shape_.n_head_kv));
        for (int h = 0; h < shape_.n_head_kv; ++h) {
            for (int64_t i = 0; i < b.n; ++i) ids[h * b.n + i] = static_cast<float>(b.n_past + i);
        }
        batch_ids_ = g.input_f32(ids, {1, b.n, shape_.n_head_kv}, "batch_ids");
        // The batch's keys enter with no accumulated score (a prefix is never scored).
        batch_zero_scores_ = decays() ? g.input_f32(std::vector<float>(ids.size(), 0.0f), {1, b.n, shape_.n_head_kv},
                                                    "batch_zero_scores")
                                      : nullptr;
        // The pinned slots' rank offset, when this step selects.
        pin_rank_ = nullptr;
        const int64_t n_all = n_kept_ + b.n;
        if (b.is_step && n_pinned_ > 0 && n_all > budget_) {
            std::vector<float> offset(static_cast<size_t>(n_all), 0.0f);
            std::fill(offset.begin(), offset.begin() + n_pinned_, kPinnedRank);
            pin_rank_ = g.input_f32(offset, {n_all, 1}, "pinned_rank");
        }
    }

    ggml_tensor* attend(GraphBuilder& g, int layer, const Batch& b, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) override {
        ggml_context* ctx = g.ctx();
        const float scale = shape_.scale();
        ggml_tensor* kb = ggml_permute(ctx, k, 0, 2, 1, 3);  // [d, n, H_kv]
        ggml_tensor* vb = ggml_permute(ctx, v, 0, 2, 1, 3);
        if (!b.is_step) {
            // The prefix: ordinary causal attention over D (which, before any step, is all of
            // C), then its keys/values join C unselected.
            ggml_tensor* out = segmented_attention(g, q, d_.view(g, layer, 0, b.n_past + b.n), b.n_past, scale);
            store(g, layer, kb, vb, batch_ids_, batch_zero_scores_, n_kept_);
            return out;
        }
        const int64_t n_all = n_kept_ + b.n;
        if (n_all <= budget_ && !decays()) {
            // Everything fits and nothing accumulates: no selection, so no scores. The step's
            // keys join C after the kept ones, written in place, and the step attends over C's
            // first n_all slots in one fused pass: what full attention computes over the same
            // keys, without a copy of C into [C ; step] and back every step.
            ggml_tensor* slots = g.shared_input("c_append " + std::to_string(n_kept_) + " " + std::to_string(b.n), [&] {
                std::vector<int32_t> r(static_cast<size_t>(b.n));
                std::iota(r.begin(), r.end(), static_cast<int32_t>(n_kept_));
                return g.input_i32(r, "c_append_slots");
            });
            // Expanded here: a step computes no logits, so the last layer's attention output,
            // through which the writes are read, is not part of the graph.
            ggml_tensor* kw = ggml_set_rows(ctx, c_->k(layer), kb, slots);
            ggml_tensor* vw = ggml_set_rows(ctx, c_->v(layer), vb, slots);
            g.expand(kw);
            g.expand(vw);
            g.expand(ggml_set_rows(ctx, c_->ids(layer), batch_ids_, slots));
            ggml_tensor* mask = causal_mask(g, {{0, n_all}}, n_kept_, b.n, false, false, 0, n_kept_);
            return fused_attention(g, q, first_slots(ctx, kw, n_all), first_slots(ctx, vw, n_all), mask, scale);
        }
        // [C ; step] in C's type (f16 unless the session is all f32: the scores then run on
        // the same f16 dot products fused attention uses). Keys of C are visible to every query
        // of the step; the step is causal.
        const ggml_type t = c_->k(layer)->type;
        ggml_tensor* ks = ggml_cast(ctx, kb, t);
        ggml_tensor* vs = ggml_cast(ctx, vb, t);
        ggml_tensor* k_all = n_kept_ ? ggml_concat(ctx, first_slots(ctx, c_->k(layer), n_kept_), ks, 1) : ks;
        ggml_tensor* v_all = n_kept_ ? ggml_concat(ctx, first_slots(ctx, c_->v(layer), n_kept_), vs, 1) : vs;
        ggml_tensor* ids_all = n_kept_ ? ggml_concat(ctx, first_slots(ctx, c_->ids(layer), n_kept_), batch_ids_, 1)
                                       : batch_ids_;
        ScoredAttention a = scored_attention(g, q, k_all, v_all, n_kept_, scale);
        ggml_tensor* scores = a.scores;  // [n_all, H_kv]: what the selection ranks
        ggml_tensor* acc = nullptr;      // [1, n_all, H_kv]: accumulated scores to carry (decay)
        if (decays()) {
            // d * s_prev + s_step; the step's keys have s_prev = 0.
            ggml_tensor* prev = n_kept_ ? ggml_concat(ctx, first_slots(ctx, c_->scores(layer), n_kept_), batch_zero_scores_, 1)
                                        : batch_zero_scores_;
            ggml_tensor* decayed = ggml_reshape_2d(ctx, ggml_scale(ctx, prev, rule_.score_decay), n_all, shape_.n_head_kv);
            scores = ggml_add(ctx, decayed, scores);
            acc = ggml_reshape_3d(ctx, scores, 1, n_all, shape_.n_head_kv);
        }
        if (n_all <= budget_) {
            store(g, layer, k_all, v_all, ids_all, acc, 0);
            return a.out;
        }
        // Top-B per KV head (unordered), then back into entry order by sorting the kept ids.
        ggml_tensor* rank = pin_rank_ ? ggml_add(ctx, scores, pin_rank_) : scores;
        ggml_tensor* top = ggml_top_k(ctx, rank, budget_);                            // [B, H_kv] I32
        ggml_tensor* k_sel = ggml_get_rows(ctx, k_all, top);                          // [d, B, H_kv]
        ggml_tensor* v_sel = ggml_get_rows(ctx, v_all, top);
        ggml_tensor* id_sel = ggml_get_rows(ctx, ids_all, top);                       // [1, B, H_kv]
        ggml_tensor* order = ggml_argsort(ctx, ggml_reshape_2d(ctx, id_sel, budget_, shape_.n_head_kv), GGML_SORT_ORDER_ASC);
        store(g, layer, ggml_get_rows(ctx, k_sel, order), ggml_get_rows(ctx, v_sel, order),
              ggml_get_rows(ctx, id_sel, order), acc ? ggml_get_rows(ctx, ggml_get_rows(ctx, acc, top), order) : nullptr, 0);
        return a.out;
    }

    void commit(const Batch& b) override {
        if (!b.is_step && rule_.pin_prefix) n_pinned_ += b.n;
        n_kept_ = std::min<int64_t>(budget_, n_kept_ + b.n);
    }

    std::vector<int32_t> carried(int layer, int* n_kept) const override {
        *n_kept = static_cast<int>(n_kept_);
        std::vector<float> ids(static_cast<size_t>(c_->capacity()) * shape_.n_head_kv);
        ggml_backend_tensor_get(c_->ids(layer), ids.data(), 0, ids.size() * sizeof(float));
        std::vector<int32_t> out;
        for (int h = 0; h < shape_.n_head_kv; ++h) {
            for (int64_t i = 0; i < n_kept_; ++i) out.push_back(static_cast<int32_t>(ids[h * c_->capacity() + i]));
        }
        return out;
    }
    void save(StateOut& out) const override {
        out.put_int("statekv.carried.n_kept", n_kept_);
        if (rule_.pin_prefix) out.put_int("statekv.carried.n_pinned", n_pinned_);
        if (n_kept_ == 0) return;
        for (int il = 0; il < shape_.n_layer; ++il) {
            if (!c_->holds(il)) continue;
            const std::vector<ggml_tensor*> ts = slot_tensors(*c_, il);
            for (size_t i = 0; i < ts.size(); ++i) {
                // Slots [0, n_kept) of each head.
                ggml_tensor* t = ts[i];
                std::vector<StateOut::Piece> pieces;
                for (int h = 0; h < shape_.n_head_kv; ++h) pieces.push_back({t, h * t->nb[2], static_cast<size_t>(n_kept_) * t->nb[1]});
                out.put_tensor(kSlotNames[i] + std::to_string(il), t->type, {t->ne[0], n_kept_, t->ne[2]}, pieces);
            }
        }
    }
    void load(const StateIn& in, int n_steps) override {
        // C holds min(B, tokens entered) entries per head, always.
        const int64_t want = std::min<int64_t>(budget_, d_.size());
        const int64_t n = in.get_int("statekv.carried.n_kept", want, want);
        if (rule_.pin_prefix) n_pinned_ = load_pinned(in, n, n_steps);
        grow(n);
        for (int il = 0; il < shape_.n_layer && n > 0; ++il) {
            if (!c_->holds(il)) continue;
            const std::vector<ggml_tensor*> ts = slot_tensors(*c_, il);
            for (size_t i = 0; i < ts.size(); ++i) {
                ggml_tensor* t = ts[i];
                const std::string name = kSlotNames[i] + std::to_string(il);
                in.expect_tensor(name, t->type, {t->ne[0], n, t->ne[2]});
                const size_t per_head = static_cast<size_t>(n) * t->nb[1];
                for (int h = 0; h < shape_.n_head_kv; ++h) in.read(name, h * per_head, t, h * t->nb[2], per_head);
            }
        }
        n_kept_ = n;
        if (n_pinned_ > 0) check_pinned_slots(in);
    }

    int64_t carried_tokens() const override { return n_kept_; }
    size_t carried_bytes() const override { return c_->bytes(); }

    std::unique_ptr<CachePolicy> fork(const DetailedCache& d) const override {
        auto p = std::make_unique<StateKVPolicy>(shape_, backend_, d, rule_, type_, c_->capacity());
        for (int il = 0; il < shape_.n_layer; ++il) {
            if (!c_->holds(il)) continue;
            const std::vector<ggml_tensor*> from = slot_tensors(*c_, il), to = slot_tensors(*p->c_, il);
            for (size_t i = 0; i < from.size(); ++i) ggml_backend_tensor_copy(from[i], to[i]);
        }
        p->n_kept_ = n_kept_;
        p->n_pinned_ = n_pinned_;
        return p;
    }

private:
    static constexpr int kInitialCapacity = 256;

    // Room for `need` entries per head (need <= B): doubles the capacity, capped at B, and moves
    // the kept entries [0, n_kept) of every head into the new storage.
    void grow(int64_t need) {
        if (need <= c_->capacity()) return;
        const int cap = static_cast<int>(std::min<int64_t>(budget_, std::max<int64_t>(need, 2 * int64_t(c_->capacity()))));
        auto bigger = new_carried_state(shape_, backend_, type_, cap, decays());
        std::vector<uint8_t> buf;
        for (int il = 0; il < shape_.n_layer && n_kept_ > 0; ++il) {
            if (!c_->holds(il)) continue;
            const std::vector<ggml_tensor*> from = slot_tensors(*c_, il), to = slot_tensors(*bigger, il);
            for (size_t i = 0; i < from.size(); ++i) {
                const size_t per_head = static_cast<size_t>(n_kept_) * from[i]->nb[1];
                buf.resize(per_head);
                for (int h = 0; h < shape_.n_head_kv; ++h) {
                    ggml_backend_tensor_get(from[i], buf.data(), h * from[i]->nb[2], per_head);
                    ggml_backend_tensor_set(to[i], buf.data(), h * to[i]->nb[2], per_head);
                }
            }
        }
        c_ = std::move(bigger);
    }

    bool decays() const { return rule_.score_decay > 0.0f; }

    // C's tensors of a held layer, in kSlotNames' order (scores only when the rule decays).
    std::vector<ggml_tensor*> slot_tensors(const KVStore& c, int il) const {
        std::vector<ggml_tensor*> ts{c.k(il), c.v(il), c.ids(il)};
        if (decays()) ts.push_back(c.scores(il));
        return ts;
    }

    // The stored number of pinned slots: the prefix, all of D before the first step.
    int64_t load_pinned(const StateIn& in, int64_t n_kept, int n_steps) const {
        const int64_t n = in.get_int("statekv.carried.n_pinned", 0, n_kept);
        if (n_steps == 0 ? n != d_.size() : n > d_.size() - n_steps) {
            in.fail("statekv.carried.n_pinned = " + std::to_string(n) + " is not the prefix of a session of " +
                    std::to_string(d_.size()) + " tokens in " + std::to_string(n_steps) + " steps");
        }
        return n;
    }

    // The pinned slots of every head hold the prefix, tokens 0 .. n_pinned - 1, in order.
    void check_pinned_slots(const StateIn& in) const {
        for (int il = 0; il < shape_.n_layer; ++il) {
            if (!c_->holds(il)) continue;
            int n = 0;
            const std::vector<int32_t> ids = carried(il, &n);
            for (int h = 0; h < shape_.n_head_kv; ++h) {
                for (int64_t i = 0; i < n_pinned_; ++i) {
                    if (ids[static_cast<size_t>(h) * n + i] != i) {
                        in.fail("c.ids." + std::to_string(il) + " does not keep the pinned prefix (tokens 0.." +
                                std::to_string(n_pinned_ - 1) + ") in KV head " + std::to_string(h));
                    }
                }
            }
        }
    }

    // C[first : first + n] <- (k, v, ids, scores) of shape [d, n, H_kv], [1, n, H_kv] (scores:
    // null unless the rule decays).
    void store(GraphBuilder& g, int layer, ggml_tensor* k, ggml_tensor* v, ggml_tensor* ids, ggml_tensor* scores,
               int64_t first) {
        ggml_context* ctx = g.ctx();
        const int64_t n = k->ne[1];
        g.expand(ggml_cpy(ctx, k, slots_from(ctx, c_->k(layer), first, n)));
        g.expand(ggml_cpy(ctx, v, slots_from(ctx, c_->v(layer), first, n)));
        g.expand(ggml_cpy(ctx, ids, slots_from(ctx, c_->ids(layer), first, n)));
        if (scores) g.expand(ggml_cpy(ctx, scores, slots_from(ctx, c_->scores(layer), first, n)));
    }

    KVShape shape_;
    const Backend& backend_;
    const DetailedCache& d_;
    SelectionRule rule_;
    int budget_;
    ggml_type type_;
    std::shared_ptr<KVStore> c_;
    int64_t n_kept_ = 0;
    int64_t n_pinned_ = 0;  // the first slots of every head hold the prefix for good (pin_prefix)
    ggml_tensor* batch_ids_ = nullptr;
    ggml_tensor* batch_zero_scores_ = nullptr;
    ggml_tensor* pin_rank_ = nullptr;
};

}  // namespace

std::unique_ptr<CachePolicy> make_statekv_policy(const KVShape& shape, const Backend& backend, const DetailedCache& d,
                                                 const SelectionRule& rule, ggml_type type) {
    return std::make_unique<StateKVPolicy>(shape, backend, d, rule, type);
}

}  // namespace statekv
