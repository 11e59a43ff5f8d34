#include "memory/kv_cache.h"

#include <numeric>

namespace statekv {

ggml_tensor* KVCacheAttention::attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) {
    const int n = static_cast<int>(q->ne[2]);
    if (!slots_) {
        std::vector<int32_t> slots(n);
        std::iota(slots.begin(), slots.end(), n_past_);
        slots_ = g.input_i32(slots, "kv_slots");
    }
    std::vector<KVSegment> segs = earlier_ ? earlier_(g, layer) : std::vector<KVSegment>();
    segs.push_back(cache_.write_and_view(g.ctx(), layer, k, v, slots_, n_past_ + n, begin_));
    return segmented_attention(g, q, segs, begin_ + n_past_, scale_, cache_.shape().window(layer));
}

}  // namespace statekv
