#include "memory/detailed_cache.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "statekv/statekv.h"

namespace statekv {

namespace {

// Slots the ring gets beyond the window when it is first made: batches up to this size never
// grow it.
constexpr int kRingBatch = 512;

}  // namespace

DetailedCache::Chunk::Chunk(const KVShape& shape, const Backend& backend, ggml_type type, int capacity)
    : store(shape, backend, type, capacity, KVStore::Layout::TokenMajor, /*with_ids*/ false, /*clear*/ false,
            "a detailed cache chunk (growing it by " + std::to_string(capacity) + " tokens)", shape.layers(false)) {}

std::shared_ptr<DetailedCache::Chunk> DetailedCache::new_chunk(int capacity) const {
    return std::make_shared<Chunk>(shape_, backend_, type_, capacity);
}

DetailedCache::DetailedCache(const KVShape& shape, const Backend& backend, ggml_type type, int chunk_tokens)
    : shape_(shape), backend_(backend), type_(type), chunk_tokens_(chunk_tokens), written_(shape.n_layer, {nullptr, nullptr}) {
    check_kv_type(shape, type);
    sliding_ = shape.layers(true);
    keep_ = shape.window_keep();
}

std::vector<DetailedCache::RingRun> DetailedCache::ring_runs(int64_t begin, int64_t end) const {
    std::vector<RingRun> runs;
    const int64_t cap = ring_->capacity();
    for (int64_t t = begin; t < end;) {
        const int64_t slot = t % cap, n = std::min(end - t, cap - slot);
        runs.push_back({t, slot, n});
        t += n;
    }
    return runs;
}

void DetailedCache::grow_ring(int capacity) {
    auto bigger = std::make_unique<KVStore>(shape_, backend_, type_, capacity, KVStore::Layout::TokenMajor,
                                            /*with_ids*/ false, /*clear*/ false,
                                            "the sliding-window layers' cache (" + std::to_string(capacity) + " tokens)",
                                            sliding_);
    if (ring_ && n_tokens_ > 0) {
        // The tokens a sliding layer still reads, from their old slots to their new ones.
        const int64_t first = std::max<int64_t>(0, n_tokens_ - keep_);
        const size_t row = ggml_row_size(type_, shape_.row());
        std::vector<uint8_t> buf(static_cast<size_t>(n_tokens_ - first) * row);
        const std::vector<RingRun> from = ring_runs(first, n_tokens_);
        std::swap(ring_, bigger);
        const std::vector<RingRun> to = ring_runs(first, n_tokens_);
        std::swap(ring_, bigger);
        for (int il = 0; il < shape_.n_layer; ++il) {
            if (!sliding_[il]) continue;
            for (const bool keys : {true, false}) {
                ggml_tensor* src = keys ? ring_->k(il) : ring_->v(il);
                ggml_tensor* dst = keys ? bigger->k(il) : bigger->v(il);
                for (const RingRun& r : from) ggml_backend_tensor_get(src, &buf[(r.token - first) * row], r.slot * row, r.n * row);
                for (const RingRun& r : to) ggml_backend_tensor_set(dst, &buf[(r.token - first) * row], r.slot * row, r.n * row);
            }
        }
    }
    ring_ = std::move(bigger);
}

void DetailedCache::reserve(int n) {
    if (std::find(sliding_.begin(), sliding_.end(), true) != sliding_.end()) {
        if (!ring_ || ring_->capacity() < int64_t(keep_) + n) grow_ring(keep_ + std::max(n, kRingBatch));
    }
    if (!chunks_.empty() && !last_shared_ && chunks_.back()->store.capacity() - chunks_.back()->used >= n) return;
    chunks_.push_back(new_chunk(std::max(n, chunk_tokens_)));
    last_shared_ = false;
}

ggml_tensor* DetailedCache::slots_input(GraphBuilder& g, bool ring, int64_t n) const {
    return g.shared_input(std::string(ring ? "d_ring_slots " : "d_slots ") + std::to_string(n), [&] {
        std::vector<int32_t> s(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) {
            s[i] = static_cast<int32_t>(ring ? (n_tokens_ + i) % ring_->capacity() : chunks_.back()->used + i);
        }
        return g.input_i32(s, ring ? "d_ring_slots" : "d_slots");
    });
}

void DetailedCache::write(GraphBuilder& g, int layer, ggml_tensor* k, ggml_tensor* v) {
    const bool ring = sliding_[layer];
    const KVStore& store = ring ? *ring_ : chunks_.back()->store;
    const auto written = store.write(g.ctx(), layer, k, v, slots_input(g, ring, k->ne[2]));
    g.expand(written.first);
    g.expand(written.second);
    written_[layer] = written;
}

std::vector<KVSegment> DetailedCache::view(GraphBuilder& g, int layer, int64_t begin, int64_t end) const {
    std::vector<KVSegment> out;
    const auto segment = [&](const KVStore& store, ggml_tensor* k, ggml_tensor* v, int64_t token, int64_t slot, int64_t n) {
        KVSegment s;
        s.begin = token;
        s.n = n;
        s.k = store.view(g.ctx(), k, slot, n);
        s.v = store.view(g.ctx(), v, slot, n);
        out.push_back(s);
    };
    if (sliding_[layer]) {
        if (begin < n_tokens_ - keep_ || begin < 0) {
            throw std::logic_error("the detailed cache keeps the last " + std::to_string(keep_) +
                                   " tokens of a sliding-window layer, asked for token " + std::to_string(begin));
        }
        ggml_tensor* k = written_[layer].first ? written_[layer].first : ring_->k(layer);
        ggml_tensor* v = written_[layer].second ? written_[layer].second : ring_->v(layer);
        for (const RingRun& r : ring_runs(begin, end)) segment(*ring_, k, v, r.token, r.slot, r.n);
        return out;
    }
    int64_t chunk_begin = 0;  // token index of the chunk's slot 0
    for (size_t ci = 0; ci < chunks_.size() && chunk_begin < end; ++ci) {
        const Chunk& c = *chunks_[ci];
        const bool last = ci + 1 == chunks_.size();
        // Tokens written in this graph occupy slots beyond `used` of the last chunk.
        const int64_t n_in_chunk = last ? end - chunk_begin : c.used;
        const int64_t lo = std::max(begin, chunk_begin);
        const int64_t hi = std::min(end, chunk_begin + n_in_chunk);
        if (lo < hi) {
            const bool through_write = last && written_[layer].first;
            segment(c.store, through_write ? written_[layer].first : c.store.k(layer),
                    through_write ? written_[layer].second : c.store.v(layer), lo, lo - chunk_begin, hi - lo);
        }
        chunk_begin += c.used;
    }
    return out;
}

void DetailedCache::commit(int n) {
    chunks_.back()->used += n;
    n_tokens_ += n;
}

DetailedCache::TailSpace DetailedCache::tail_space(int n) const {
    TailSpace t;
    if (chunks_.empty() || last_shared_ || std::find(sliding_.begin(), sliding_.end(), true) != sliding_.end()) {
        return t;
    }
    const Chunk& c = *chunks_.back();
    if (c.store.capacity() - c.used < n) return t;
    t.store = &c.store;
    t.first_slot = c.used;
    t.store_begin = n_tokens_ - c.used;
    return t;
}

double DetailedCache::bytes_per_token() const {
    int n_all = 0;  // layers that keep every token
    for (int il = 0; il < shape_.n_layer; ++il) n_all += sliding_[il] ? 0 : 1;
    return 2.0 * n_all * double(ggml_row_size(type_, shape_.row()));
}

size_t DetailedCache::bytes() const {
    size_t b = ring_ ? ring_->bytes() : 0;
    for (const auto& c : chunks_) b += c->store.bytes();
    return b;
}

void DetailedCache::save(StateOut& out) const {
    std::vector<int64_t> layout;  // (capacity, used) per chunk
    for (const auto& c : chunks_) {
        layout.push_back(c->store.capacity());
        layout.push_back(c->used);
    }
    out.put_int_array("statekv.detailed.chunks", layout);
    out.put_bool("statekv.detailed.last_shared", last_shared_);
    if (n_tokens_ == 0) return;
    const int64_t n_window = std::min<int64_t>(n_tokens_, keep_);
    for (int il = 0; il < shape_.n_layer; ++il) {
        for (const bool keys : {true, false}) {
            const std::string name = std::string(keys ? "d.k." : "d.v.") + std::to_string(il);
            std::vector<StateOut::Piece> pieces;
            if (sliding_[il]) {
                if (n_window == 0) continue;
                const ggml_tensor* t = keys ? ring_->k(il) : ring_->v(il);
                for (const RingRun& r : ring_runs(n_tokens_ - n_window, n_tokens_)) {
                    pieces.push_back({t, static_cast<size_t>(r.slot) * t->nb[1], static_cast<size_t>(r.n) * t->nb[1]});
                }
                out.put_tensor(name, type_, {shape_.row(), n_window}, pieces);
                continue;
            }
            for (const auto& c : chunks_) {
                const ggml_tensor* t = keys ? c->store.k(il) : c->store.v(il);
                if (c->used > 0) pieces.push_back({t, 0, static_cast<size_t>(c->used) * t->nb[1]});
            }
            out.put_tensor(name, type_, {shape_.row(), n_tokens_}, pieces);
        }
    }
}

void DetailedCache::load(const StateIn& in) {
    const std::vector<int64_t> layout = in.get_int_array("statekv.detailed.chunks", 0, std::numeric_limits<int32_t>::max());
    if (layout.size() % 2 != 0) in.fail("statekv.detailed.chunks must hold (capacity, used) pairs, got an odd count");
    const size_t n_chunks = layout.size() / 2;
    int64_t total = 0;
    for (size_t i = 0; i < n_chunks; ++i) {
        const int64_t cap = layout[2 * i], used = layout[2 * i + 1];
        // reserve() makes chunks of chunk_tokens_, or of one larger step that then fills it (or
        // leaves it empty when that step failed).
        const bool shape_ok = cap == chunk_tokens_ || (cap > chunk_tokens_ && (used == cap || used == 0));
        if (cap <= 0 || used < 0 || used > cap || !shape_ok) {
            in.fail("statekv.detailed.chunks holds an impossible chunk (" + std::to_string(used) + " of " +
                    std::to_string(cap) + " tokens; chunks of this session hold " + std::to_string(chunk_tokens_) + ")");
        }
        total += used;
        if (total > std::numeric_limits<int32_t>::max()) in.fail("statekv.detailed.chunks holds more than 2^31 tokens");
    }
    const int64_t n_window = std::min<int64_t>(total, keep_);
    for (int il = 0; il < shape_.n_layer && total > 0; ++il) {
        const int64_t rows = sliding_[il] ? n_window : total;
        if (rows == 0) continue;
        in.expect_tensor("d.k." + std::to_string(il), type_, {shape_.row(), rows});
        in.expect_tensor("d.v." + std::to_string(il), type_, {shape_.row(), rows});
    }
    const size_t row = ggml_row_size(type_, shape_.row());
    size_t src = 0;  // byte offset of the chunk's rows in the stored tensors
    for (size_t i = 0; i < n_chunks; ++i) {
        auto c = new_chunk(static_cast<int>(layout[2 * i]));
        c->used = static_cast<int>(layout[2 * i + 1]);
        const size_t nbytes = static_cast<size_t>(c->used) * row;
        for (int il = 0; il < shape_.n_layer && nbytes > 0; ++il) {
            if (sliding_[il]) continue;
            in.read("d.k." + std::to_string(il), src, c->store.k(il), 0, nbytes);
            in.read("d.v." + std::to_string(il), src, c->store.v(il), 0, nbytes);
        }
        src += nbytes;
        chunks_.push_back(std::move(c));
    }
    if (n_window > 0) {
        grow_ring(keep_ + kRingBatch);  // empty: nothing to move
        for (const RingRun& r : ring_runs(total - n_window, total)) {
            const size_t from = static_cast<size_t>(r.token - (total - n_window)) * row;
            for (int il = 0; il < shape_.n_layer; ++il) {
                if (!sliding_[il]) continue;
                in.read("d.k." + std::to_string(il), from, ring_->k(il), r.slot * row, r.n * row);
                in.read("d.v." + std::to_string(il), from, ring_->v(il), r.slot * row, r.n * row);
            }
        }
    }
    n_tokens_ = total;
    last_shared_ = in.get_bool_or("statekv.detailed.last_shared", false);
}

std::unique_ptr<DetailedCache> DetailedCache::fork() const {
    auto d = std::make_unique<DetailedCache>(shape_, backend_, type_, chunk_tokens_);
    d->chunks_ = chunks_;
    d->n_tokens_ = n_tokens_;
    if (ring_) {
        // The ring is overwritten in place: each side gets its own.
        d->ring_ = std::make_unique<KVStore>(shape_, backend_, type_, ring_->capacity(), KVStore::Layout::TokenMajor,
                                             false, false, "the sliding-window layers' cache of a fork", sliding_);
        for (int il = 0; il < shape_.n_layer; ++il) {
            if (!sliding_[il]) continue;
            ggml_backend_tensor_copy(ring_->k(il), d->ring_->k(il));
            ggml_backend_tensor_copy(ring_->v(il), d->ring_->v(il));
        }
    }
    d->last_shared_ = true;
    const_cast<DetailedCache*>(this)->last_shared_ = true;
    return d;
}

}  // namespace statekv
