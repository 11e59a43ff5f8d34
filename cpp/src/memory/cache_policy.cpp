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
    if (!(o.score_decay >= 0.0f && o.score_decay < 1.0f)) {
        throw InputError("score_decay must be in [0, 1) (0: the paper's rule), got " + std::to_string(o.score_decay));
    }
    // The variants change how statekv selects; the other modes select nothing, so a variant
    // asked of them would be silently ignored.
    if (o.mode != "statekv" && (o.score_decay != 0.0f || o.pin_prefix)) {
        throw InputError(std::string(o.score_decay != 0.0f ? "score_decay" : "pin_prefix") +
                         " applies to mode statekv only, not to mode " + o.mode);
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
    return make_statekv_policy(shape, backend, d, {o.budget, o.score_decay, o.pin_prefix}, c_type);
}

}  // namespace statekv
