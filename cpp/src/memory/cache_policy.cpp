#include "memory/cache_policy.h"

#include "statekv/statekv.h"

namespace statekv {

void check_cache_policy_options(const SessionOptions& o) {
    if (o.mode == "statekv") {
        if (o.budget <= 0) throw InputError("budget must be a positive number of tokens, got " + std::to_string(o.budget));
    } else if (o.mode == "window") {
        if (o.window <= 0) throw InputError("window must be a positive number of steps, got " + std::to_string(o.window));
    } else if (o.mode != "full") {
        throw InputError("unknown mode '" + o.mode + "' (expected full, window or statekv)");
    }
}

std::unique_ptr<CachePolicy> make_cache_policy(const SessionOptions& o, const KVShape& shape, const Backend& backend,
                                               const DetailedCache& d) {
    check_cache_policy_options(o);
    if (o.mode == "full") return make_full_policy(shape, d);
    if (o.mode == "window") return make_window_policy(shape, d, o.window);
    // The carried state is small (B per head): keep it exact when D is f32, else f16
    // (quantized types cannot be concatenated and re-gathered in place).
    const ggml_type c_type = d.type() == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    return make_statekv_policy(shape, backend, d, o.budget, c_type);
}

}  // namespace statekv
