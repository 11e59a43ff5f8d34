#include "memory/detailed_cache.h"

#include <algorithm>
#include <limits>

#include "statekv/statekv.h"

namespace statekv {

DetailedCache::Chunk::Chunk(const KVShape& shape, const Backend& backend, ggml_type type, int capacity)
    : store(shape, backend, type, capacity, KVStore::Layout::TokenMajor, /*with_ids*/ false, /*clear*/ false,
            "a detailed cache chunk (growing it by " + std::to_string(capacity) + " tokens)") {}

std::shared_ptr<DetailedCache::Chunk> DetailedCache::new_chunk(int capacity) const {
    return std::make_shared<Chunk>(shape_, backend_, type_, capacity);
}

DetailedCache::DetailedCache(const KVShape& shape, const Backend& backend, ggml_type type, int chunk_tokens)
    : shape_(shape), backend_(backend), type_(type), chunk_tokens_(chunk_tokens), written_(shape.n_layer, {nullptr, nullptr}) {
    check_kv_type(shape, type);
}

void DetailedCache::reserve(int n) {
    if (!chunks_.empty() && !last_shared_ && chunks_.back()->store.capacity() - chunks_.back()->used >= n) return;
    chunks_.push_back(new_chunk(std::max(n, chunk_tokens_)));
    last_shared_ = false;
}

std::vector<int32_t> DetailedCache::next_slots(int n) const {
    std::vector<int32_t> s(n);
    for (int i = 0; i < n; ++i) s[i] = chunks_.back()->used + i;
    return s;
}

void DetailedCache::write(GraphBuilder& g, int layer, ggml_tensor* k, ggml_tensor* v, ggml_tensor* slots) {
    const auto written = chunks_.back()->store.write(g.ctx(), layer, k, v, slots);
    g.expand(written.first);
    g.expand(written.second);
    written_[layer] = written;
}

std::vector<KVSegment> DetailedCache::view(GraphBuilder& g, int layer, int64_t begin, int64_t end) const {
    std::vector<KVSegment> out;
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
            ggml_tensor* ksrc = through_write ? written_[layer].first : c.store.k(layer);
            ggml_tensor* vsrc = through_write ? written_[layer].second : c.store.v(layer);
            KVSegment s;
            s.begin = lo;
            s.n = hi - lo;
            s.k = c.store.view(g.ctx(), ksrc, lo - chunk_begin, s.n);
            s.v = c.store.view(g.ctx(), vsrc, lo - chunk_begin, s.n);
            out.push_back(s);
        }
        chunk_begin += c.used;
    }
    return out;
}

void DetailedCache::commit(int n) {
    chunks_.back()->used += n;
    n_tokens_ += n;
}

size_t DetailedCache::bytes() const {
    size_t b = 0;
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
    for (int il = 0; il < shape_.n_layer; ++il) {
        for (const bool keys : {true, false}) {
            std::vector<StateOut::Piece> pieces;
            for (const auto& c : chunks_) {
                const ggml_tensor* t = keys ? c->store.k(il) : c->store.v(il);
                if (c->used > 0) pieces.push_back({t, 0, static_cast<size_t>(c->used) * t->nb[1]});
            }
            out.put_tensor(std::string(keys ? "d.k." : "d.v.") + std::to_string(il), type_, {shape_.row(), n_tokens_}, pieces);
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
    for (int il = 0; il < shape_.n_layer && total > 0; ++il) {
        in.expect_tensor("d.k." + std::to_string(il), type_, {shape_.row(), total});
        in.expect_tensor("d.v." + std::to_string(il), type_, {shape_.row(), total});
    }
    size_t src = 0;  // byte offset of the chunk's rows in the stored tensors
    for (size_t i = 0; i < n_chunks; ++i) {
        auto c = new_chunk(static_cast<int>(layout[2 * i]));
        c->used = static_cast<int>(layout[2 * i + 1]);
        const size_t nbytes = static_cast<size_t>(c->used) * c->store.k(0)->nb[1];
        for (int il = 0; il < shape_.n_layer && nbytes > 0; ++il) {
            in.read("d.k." + std::to_string(il), src, c->store.k(il), 0, nbytes);
            in.read("d.v." + std::to_string(il), src, c->store.v(il), 0, nbytes);
        }
        src += nbytes;
        chunks_.push_back(std::move(c));
    }
    n_tokens_ = total;
    last_shared_ = in.get_bool_or("statekv.detailed.last_shared", false);
}

std::unique_ptr<DetailedCache> DetailedCache::fork() const {
    auto d = std::make_unique<DetailedCache>(shape_, backend_, type_, chunk_tokens_);
    d->chunks_ = chunks_;
    d->n_tokens_ = n_tokens_;
    d->last_shared_ = true;
    const_cast<DetailedCache*>(this)->last_shared_ = true;
    return d;
}

}  // namespace statekv
