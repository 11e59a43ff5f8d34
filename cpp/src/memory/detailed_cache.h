// D, the detailed cache: keys and values of every token of the session, in entry order, per
// layer. It grows chunk by chunk; a chunk never moves once allocated, so growing never copies
// what D holds. Forks share the chunks they have in common (append-only storage): a chunk is
// written only while a single session owns it.
//
// A sliding-window layer (window w) never again reads a key more than w - 1 tokens old, so D
// keeps only those for it: a ring of w - 1 + (largest batch) slots, token t in slot t % capacity,
// per sliding layer. The chunks hold the other layers only.
#pragma once

#include <memory>
#include <vector>

#include "io/state_io.h"
#include "memory/kv_store.h"

namespace statekv {

class DetailedCache {
public:
    DetailedCache(const KVShape& shape, const Backend& backend, ggml_type type, int chunk_tokens);

    // Room for n more tokens, all in one writable chunk (a step never straddles chunks).
    void reserve(int n);
    // In-graph write of a batch's keys/values (tokens [size(), size() + n)) for one layer.
    // Reads through view() order themselves after the write.
    void write(GraphBuilder& g, int layer, ggml_tensor* k, ggml_tensor* v);
    // Views of tokens [begin, end) of one layer, chunk by chunk (or ring run by ring run). Tokens
    // written in this graph are read through their write. A sliding-window layer holds only the
    // last w - 1 tokens before the graph: an earlier `begin` is a logic error.
    std::vector<KVSegment> view(GraphBuilder& g, int layer, int64_t begin, int64_t end) const;
    // Host bookkeeping after a graph that wrote n tokens has run.
    void commit(int n);
    // A new graph starts: forget the write nodes of the previous one.
    void begin_graph() { written_.assign(written_.size(), {nullptr, nullptr}); }

    // Room after D's tokens for n tokens that are written but never committed (a question and
    // its answer): D's last chunk from slot `used`, when it has the room, is D's alone (not shared
    // with a fork) and every layer lives in the chunks (no sliding-window ring). Attention over D
    // and those tokens then reads one contiguous range per layer instead of a copy of D gathered
    // for every answer token. Null `store` when there is no such room.
    struct TailSpace {
        const KVStore* store = nullptr;
        int64_t first_slot = 0;   // the slot of the first tail token
        int64_t store_begin = 0;  // the token index of the store's slot 0
    };
    TailSpace tail_space(int n) const;

    int64_t size() const { return n_tokens_; }
    // Bytes one more token takes in D (keys and values of every layer that sees all tokens; the
    // sliding layers' ring does not grow with the session).
    double bytes_per_token() const;
    size_t bytes() const;
    ggml_type type() const { return type_; }
    // Shares the chunks; both sides then write only to chunks of their own.
    std::unique_ptr<DetailedCache> fork() const;

    // Session files: tensors d.k.<layer>, d.v.<layer> of shape [head_dim * n_head_kv, size()]
    // (a sliding layer: its last min(size(), w - 1) tokens), and the chunk layout, which load()
    // rebuilds exactly (same segments, same numbers).
    void save(StateOut& out) const;
    // Into an empty cache.
    void load(const StateIn& in);

private:
    struct Chunk {
        Chunk(const KVShape& shape, const Backend& backend, ggml_type type, int capacity);
        KVStore store;  // token-major, not zeroed: only written slots are read
        int used = 0;
    };
    std::shared_ptr<Chunk> new_chunk(int capacity) const;
    // The sliding layers' ring: room for `capacity` slots, the tokens it holds moved over.
    void grow_ring(int capacity);
    // Runs of tokens [begin, end) in the ring: (first token, slot, count).
    struct RingRun {
        int64_t token;
        int64_t slot;
        int64_t n;
    };
    std::vector<RingRun> ring_runs(int64_t begin, int64_t end) const;
    ggml_tensor* slots_input(GraphBuilder& g, bool ring, int64_t n) const;
    KVShape shape_;
    std::vector<bool> sliding_;  // per layer: kept in the ring
    int keep_ = 0;               // tokens before a batch a sliding layer still reads (w - 1)
    std::unique_ptr<KVStore> ring_;
    const Backend& backend_;
    ggml_type type_;
    int chunk_tokens_;
    int64_t n_tokens_ = 0;
    std::vector<std::shared_ptr<Chunk>> chunks_;
    bool last_shared_ = false;  // the last chunk is shared with a fork: do not write into it
    std::vector<std::pair<ggml_tensor*, ggml_tensor*>> written_;  // per layer, this graph
};

}  // namespace statekv
