// The cache policy: what a frame step's queries attend to, and what the session carries from
// one step to the next. One interface, three implementations (full, window, statekv); the
// session never branches on the mode.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "memory/detailed_cache.h"
#include "memory/kv_store.h"

namespace statekv {

struct SessionOptions;

// The batch a graph processes: a prefix (before any step) or one frame step.
struct Batch {
    bool is_step = false;
    int64_t n_past = 0;  // tokens in D before this batch
    int64_t n = 0;       // tokens in this batch
};

class CachePolicy {
public:
    virtual ~CachePolicy() = default;
    // Graph inputs shared by all layers (index lists, masks).
    virtual void begin(GraphBuilder& g, const Batch& b) = 0;
    // Attention output [head_dim * n_head, n] of one layer. The batch's keys/values (RoPE
    // applied; q: [head_dim, n_head, n], k/v: [head_dim, n_head_kv, n]) are already written to
    // D; a policy that carries its own state updates it here, inside the graph.
    virtual ggml_tensor* attend(GraphBuilder& g, int layer, const Batch& b, ggml_tensor* q, ggml_tensor* k,
                                ggml_tensor* v) = 0;
    // Host bookkeeping once the graph has run.
    virtual void commit(const Batch& b) = 0;
    // Kept token indices of a layer: n_head_kv rows of *n_kept indices, ascending.
    virtual std::vector<int32_t> carried(int layer, int* n_kept) const = 0;
    virtual int64_t carried_tokens() const = 0;
    virtual size_t carried_bytes() const = 0;
    // An independent copy reading the given (forked) detailed cache.
    virtual std::unique_ptr<CachePolicy> fork(const DetailedCache& d) const = 0;
    // Session files: what the policy carries besides D.
    virtual void save(StateOut& out) const = 0;
    // Into a fresh policy whose D is already loaded; n_steps from the file's header (checked
    // against what the policy stores). ModelError naming the file for inconsistent fields.
    virtual void load(const StateIn& in, int n_steps) = 0;
};

// The one check of the policy options (mode, budget, window, the statekv rule's variants):
// InputError naming the option for a bad one.
void check_cache_policy_options(const SessionOptions& o);

// The policy the options ask for, over D.
std::unique_ptr<CachePolicy> make_cache_policy(const SessionOptions& o, const KVShape& shape, const Backend& backend,
                                               const DetailedCache& d);

// The statekv selection rule: the budget B and its variants (SessionOptions; docs/DESIGN.md
// section 1). The defaults are the paper's rule.
struct SelectionRule {
    int budget = 0;
    float score_decay = 0.0f;  // 0: scores of the current step only; d > 0: s <- d * s + s_step
    bool pin_prefix = false;   // the prefix always kept; only the other tokens compete
};

// The implementations (memory/<mode>_policy.cpp).
std::unique_ptr<CachePolicy> make_full_policy(const KVShape& shape, const DetailedCache& d);
std::unique_ptr<CachePolicy> make_window_policy(const KVShape& shape, const DetailedCache& d, int window);
std::unique_ptr<CachePolicy> make_statekv_policy(const KVShape& shape, const Backend& backend, const DetailedCache& d,
                                                 const SelectionRule& rule, ggml_type type);

}  // namespace statekv
