#include "generate.h"

namespace statekv {

Tokens slice_tokens(const Tokens& in, int b, int e) {
    Tokens out;
    const int n = static_cast<int>(in.ids.size());
    out.ids.assign(in.ids.begin() + b, in.ids.begin() + e);
    out.n_position_axes = in.n_position_axes;
    if (!in.positions.empty()) {
        for (int a = 0; a < in.n_position_axes; ++a) {
            out.positions.insert(out.positions.end(), in.positions.begin() + a * n + b, in.positions.begin() + a * n + e);
        }
    }
    if (!in.embedding_rows.empty()) {
        const size_t width = in.embeddings.size() / in.embedding_rows.size();
        for (size_t r = 0; r < in.embedding_rows.size(); ++r) {
            const int row = in.embedding_rows[r];
            if (row < b || row >= e) continue;
            out.embedding_rows.push_back(row - b);
            out.embeddings.insert(out.embeddings.end(), in.embeddings.begin() + r * width,
                                  in.embeddings.begin() + (r + 1) * width);
        }
    }
    return out;
}

std::set<int32_t> stop_tokens(const std::vector<int32_t>& end_of_turn, const std::vector<int32_t>& extra, bool ignore_eos) {
    std::set<int32_t> stop(extra.begin(), extra.end());
    if (!ignore_eos) stop.insert(end_of_turn.begin(), end_of_turn.end());
    return stop;
}

std::vector<int32_t> decode(std::vector<float> logits, int max_tokens, Sampler& sampler, std::vector<int32_t> history,
                            const std::set<int32_t>& stop, const TokenCallback& on_token, const NextLogits& next) {
    std::vector<int32_t> out;
    for (int i = 0; i < max_tokens; ++i) {
        const int32_t tok = sampler.sample(logits, history);
        out.push_back(tok);
        history.push_back(tok);
        if (on_token && !on_token(tok)) break;
        if (stop.count(tok) || i + 1 == max_tokens) break;
        logits = next(tok, i);
    }
    return out;
}

}  // namespace statekv
