// `window` (the recency baseline, "ReKV" in the StateKV authors' release): the carried state is
// the prefix plus the tokens of the last R steps, the same set in every layer and head. Both
// are ranges of D, so the policy holds no storage: a step attends to views of D.
#include <algorithm>

#include "memory/cache_policy.h"

namespace statekv {

namespace {

class WindowPolicy final : public CachePolicy {
public:
    WindowPolicy(const KVShape& shape, const DetailedCache& d, int window) : shape_(shape), d_(d), window_(window) {}

    void begin(GraphBuilder&, const Batch&) override {}

    ggml_tensor* attend(GraphBuilder& g, int layer, const Batch& b, ggml_tensor* q, ggml_tensor*, ggml_tensor*) override {
        std::vector<KVSegment> segs;
        const int64_t start = b.is_step ? window_start() : n_prefix_;
        if (start > n_prefix_) segs = d_.view(g, layer, 0, n_prefix_);
        const auto recent = d_.view(g, layer, start > n_prefix_ ? start : 0, b.n_past + b.n);
        segs.insert(segs.end(), recent.begin(), recent.end());
        return segmented_attention(g, q, segs, b.n_past, shape_.scale());
    }

    void commit(const Batch& b) override {
        if (b.is_step) {
            step_begin_.push_back(b.n_past);
        } else {
            n_prefix_ += b.n;
        }
    }

    std::vector<int32_t> carried(int, int* n_kept) const override {
        std::vector<int32_t> row;
        for (int64_t i = 0; i < n_prefix_; ++i) row.push_back(static_cast<int32_t>(i));
        for (int64_t i = std::max(n_prefix_, window_start()); i < d_.size(); ++i) row.push_back(static_cast<int32_t>(i));
        *n_kept = static_cast<int>(row.size());
        std::vector<int32_t> out;
        for (int h = 0; h < shape_.n_head_kv; ++h) out.insert(out.end(), row.begin(), row.end());
        return out;
    }
    void save(StateOut& out) const override {
        out.put_int("statekv.window.n_prefix", n_prefix_);
        out.put_int_array("statekv.window.step_begin", step_begin_);
    }
    void load(const StateIn& f, int n_steps) override {
        const int64_t n_tokens = d_.size();
        n_prefix_ = f.get_int("statekv.window.n_prefix", 0, n_tokens);
        const std::vector<int64_t> begins = f.get_int_array("statekv.window.step_begin", 0, n_tokens);
        if (static_cast<int64_t>(begins.size()) != n_steps) {
            f.fail("statekv.window.step_begin has " + std::to_string(begins.size()) + " entries but statekv.n_steps = " +
                   std::to_string(n_steps));
        }
        // The prefix is everything before the first step; steps start in order, none empty.
        if (n_prefix_ != (begins.empty() ? n_tokens : begins.front())) {
            f.fail("statekv.window.n_prefix = " + std::to_string(n_prefix_) + " does not end where the first step begins");
        }
        for (size_t i = 0; i < begins.size(); ++i) {
            const int64_t next = i + 1 < begins.size() ? begins[i + 1] : n_tokens;
            if (begins[i] >= next) f.fail("statekv.window.step_begin is not strictly increasing within the tokens held");
        }
        step_begin_ = begins;
    }

    int64_t carried_tokens() const override { return n_prefix_ + (d_.size() - std::max(n_prefix_, window_start())); }
    size_t carried_bytes() const override { return 0; }  // views of D

    std::unique_ptr<CachePolicy> fork(const DetailedCache& d) const override {
        auto p = std::make_unique<WindowPolicy>(shape_, d, window_);
        p->n_prefix_ = n_prefix_;
        p->step_begin_ = step_begin_;
        return p;
    }

private:
    // First token of the oldest step still in the window (or the end of D if no step yet).
    int64_t window_start() const {
        const size_t n = step_begin_.size();
        if (n == 0) return d_.size();
        return n <= static_cast<size_t>(window_) ? step_begin_.front() : step_begin_[n - window_];
    }

    KVShape shape_;
    const DetailedCache& d_;
    int window_;
    int64_t n_prefix_ = 0;
    std::vector<int64_t> step_begin_;
};

}  // namespace

std::unique_ptr<CachePolicy> make_window_policy(const KVShape& shape, const DetailedCache& d, int window) {
    return std::make_unique<WindowPolicy>(shape, d, window);
}

}  // namespace statekv
