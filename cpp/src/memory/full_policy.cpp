// `full`: the carried state is all of D. Every query attends to every earlier token: the
// unmodified model, the exact reference.
#include "memory/cache_policy.h"

namespace statekv {

namespace {

class FullPolicy final : public CachePolicy {
public:
    FullPolicy(const KVShape& shape, const DetailedCache& d) : shape_(shape), d_(d) {}

    void begin(GraphBuilder&, const Batch&) override {}

    ggml_tensor* attend(GraphBuilder& g, int layer, const Batch& b, ggml_tensor* q, ggml_tensor*, ggml_tensor*) override {
        return segmented_attention(g, q, d_.view(g, layer, 0, b.n_past + b.n), b.n_past, shape_.scale());
    }

    void commit(const Batch&) override {}

    std::vector<int32_t> carried(int, int* n_kept) const override {
        *n_kept = static_cast<int>(d_.size());
        std::vector<int32_t> out;
        for (int h = 0; h < shape_.n_head_kv; ++h) {
            for (int i = 0; i < *n_kept; ++i) out.push_back(i);
        }
        return out;
    }
    int64_t carried_tokens() const override { return d_.size(); }
    size_t carried_bytes() const override { return 0; }  // views of D: nothing of its own

    std::unique_ptr<CachePolicy> fork(const DetailedCache& d) const override {
        return std::make_unique<FullPolicy>(shape_, d);
    }
    void save(StateOut&) const override {}  // all of it is D
    void load(const StateIn&, int) override {}

private:
    KVShape shape_;
    const DetailedCache& d_;
};

}  // namespace

std::unique_ptr<CachePolicy> make_full_policy(const KVShape& shape, const DetailedCache& d) {
    return std::make_unique<FullPolicy>(shape, d);
}

}  // namespace statekv
