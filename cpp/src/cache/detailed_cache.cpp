#include "detailed_cache.h"

#include <algorithm>
#include <limits>

#include "ggml-alloc.h"
#include "gguf.h"

namespace statekv {

DetailedCache::Chunk::Chunk(const TextHParams& hp, const Backend& backend, ggml_type type, int cap) : capacity(cap) {
    ggml_init_params ip{ggml_tensor_overhead() * (2 * hp.n_layer + 1), nullptr, true};
    ctx = ggml_init(ip);
    const int64_t row = int64_t(hp.head_dim) * hp.n_head_kv;
    for (int il = 0; il < hp.n_layer; ++il) {
        k.push_back(ggml_new_tensor_2d(ctx, type, row, cap));
        v.push_back(ggml_new_tensor_2d(ctx, type, row, cap));
    }
    buffer = ggml_backend_alloc_ctx_tensors_from_buft(ctx, backend.default_buffer_type());
    if (!buffer) {
        ggml_free(ctx);
        throw InputError("out of memory growing the detailed cache by " + std::to_string(cap) + " tokens");
    }
}

DetailedCache::Chunk::~Chunk() {
    if (buffer) ggml_backend_buffer_free(buffer);
    if (ctx) ggml_free(ctx);
}

DetailedCache::DetailedCache(const TextHParams& hp, const Backend& backend, ggml_type type, int chunk_tokens)
    : hp_(hp), backend_(backend), type_(type), chunk_tokens_(chunk_tokens), written_(hp.n_layer, {nullptr, nullptr}) {
    if (hp.head_dim % ggml_blck_size(type) != 0) {
        throw InputError(std::string("kv_type ") + ggml_type_name(type) + " needs head_dim to be a multiple of " +
                         std::to_string(ggml_blck_size(type)) + "; the model has head_dim " + std::to_string(hp.head_dim));
    }
}

void DetailedCache::reserve(int n) {
    if (!chunks_.empty() && !last_shared_ && chunks_.back()->capacity - chunks_.back()->used >= n) return;
    chunks_.push_back(std::make_shared<Chunk>(hp_, backend_, type_, std::max(n, chunk_tokens_)));
    last_shared_ = false;
}

std::vector<int32_t> DetailedCache::next_slots(int n) const {
    std::vector<int32_t> s(n);
    for (int i = 0; i < n; ++i) s[i] = chunks_.back()->used + i;
    return s;
}

void DetailedCache::write(GraphBuilder& g, int layer, ggml_tensor* k, ggml_tensor* v, ggml_tensor* slots) {
    ggml_context* ctx = g.ctx();
    const Chunk& c = *chunks_.back();
    const int64_t row = int64_t(hp_.head_dim) * hp_.n_head_kv;
    const int64_t n = k->ne[2];
    ggml_tensor* ks = ggml_set_rows(ctx, c.k[layer], ggml_reshape_2d(ctx, k, row, n), slots);
    ggml_tensor* vs = ggml_set_rows(ctx, c.v[layer], ggml_reshape_2d(ctx, v, row, n), slots);
    g.expand(ks);
    g.expand(vs);
    written_[layer] = {ks, vs};
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
            ggml_tensor* ksrc = c.k[layer];
            ggml_tensor* vsrc = c.v[layer];
            if (last && written_[layer].first) {
                ksrc = written_[layer].first;
                vsrc = written_[layer].second;
            }
            const size_t off = static_cast<size_t>(lo - chunk_begin) * ksrc->nb[1];
            KVSegment s;
            s.begin = lo;
            s.n = hi - lo;
            s.k = ggml_view_3d(g.ctx(), ksrc, hp_.head_dim, s.n, hp_.n_head_kv, ksrc->nb[1],
                               ggml_row_size(ksrc->type, hp_.head_dim), off);
            s.v = ggml_view_3d(g.ctx(), vsrc, hp_.head_dim, s.n, hp_.n_head_kv, vsrc->nb[1],
                               ggml_row_size(vsrc->type, hp_.head_dim), off);
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
    for (const auto& c : chunks_) b += ggml_backend_buffer_get_size(c->buffer);
    return b;
}

void DetailedCache::save(StateWriter& w) const {
    std::vector<int64_t> layout;  // (capacity, used) per chunk
    for (const auto& c : chunks_) {
        layout.push_back(c->capacity);
        layout.push_back(c->used);
    }
    gguf_set_arr_data(w.kv(), "statekv.detailed.chunks", GGUF_TYPE_INT64, layout.data(), layout.size());
    gguf_set_val_bool(w.kv(), "statekv.detailed.last_shared", last_shared_);
    if (n_tokens_ == 0) return;
    const int64_t row = int64_t(hp_.head_dim) * hp_.n_head_kv;
    for (int il = 0; il < hp_.n_layer; ++il) {
        for (const bool keys : {true, false}) {
            std::vector<StateWriter::Piece> pieces;
            for (const auto& c : chunks_) {
                const ggml_tensor* t = keys ? c->k[il] : c->v[il];
                if (c->used > 0) pieces.push_back({t, 0, static_cast<size_t>(c->used) * t->nb[1]});
            }
            w.add_tensor(std::string(keys ? "d.k." : "d.v.") + std::to_string(il), type_, {row, n_tokens_}, pieces);
        }
    }
}

void DetailedCache::load(const StateReader& r) {
    const GgufFile& f = r.file();
    const std::vector<int64_t> layout = f.get_int_array("statekv.detailed.chunks", 0, std::numeric_limits<int32_t>::max());
    if (layout.size() % 2 != 0) f.fail("statekv.detailed.chunks must hold (capacity, used) pairs, got an odd count");
    const size_t n_chunks = layout.size() / 2;
    int64_t total = 0;
    for (size_t i = 0; i < n_chunks; ++i) {
        const int64_t cap = layout[2 * i], used = layout[2 * i + 1];
        // reserve() makes chunks of chunk_tokens_, or of one larger step that then fills it (or
        // leaves it empty when that step failed).
        const bool shape_ok = cap == chunk_tokens_ || (cap > chunk_tokens_ && (used == cap || used == 0));
        if (cap <= 0 || used < 0 || used > cap || !shape_ok) {
            f.fail("statekv.detailed.chunks holds an impossible chunk (" + std::to_string(used) + " of " +
                   std::to_string(cap) + " tokens; chunks of this session hold " + std::to_string(chunk_tokens_) + ")");
        }
        total += used;
        if (total > std::numeric_limits<int32_t>::max()) f.fail("statekv.detailed.chunks holds more than 2^31 tokens");
    }
    const int64_t row = int64_t(hp_.head_dim) * hp_.n_head_kv;
    for (int il = 0; il < hp_.n_layer && total > 0; ++il) {
        r.tensor("d.k." + std::to_string(il), type_, {row, total});
        r.tensor("d.v." + std::to_string(il), type_, {row, total});
    }
    size_t src = 0;  // byte offset of the chunk's rows in the stored tensors
    for (size_t i = 0; i < n_chunks; ++i) {
        auto c = std::make_shared<Chunk>(hp_, backend_, type_, static_cast<int>(layout[2 * i]));
        c->used = static_cast<int>(layout[2 * i + 1]);
        const size_t nbytes = static_cast<size_t>(c->used) * c->k[0]->nb[1];
        for (int il = 0; il < hp_.n_layer && nbytes > 0; ++il) {
            r.read("d.k." + std::to_string(il), src, c->k[il], 0, nbytes);
            r.read("d.v." + std::to_string(il), src, c->v[il], 0, nbytes);
        }
        src += nbytes;
        chunks_.push_back(std::move(c));
    }
    n_tokens_ = total;
    last_shared_ = f.get_bool_or("statekv.detailed.last_shared", false);
}

std::unique_ptr<DetailedCache> DetailedCache::fork() const {
    auto d = std::make_unique<DetailedCache>(hp_, backend_, type_, chunk_tokens_);
    d->chunks_ = chunks_;
    d->n_tokens_ = n_tokens_;
    d->last_shared_ = true;
    const_cast<DetailedCache*>(this)->last_shared_ = true;
    return d;
}

}  // namespace statekv
