// D, the detailed cache: keys and values of every token of the session, in entry order, per
// layer. It grows chunk by chunk; a chunk never moves once allocated, so growing never copies
// what D holds. Forks share the chunks they have in common (append-only storage): a chunk is
// written only while a single session owns it.
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
    // Reads through the returned view order themselves after the write.
    void write(GraphBuilder& g, int layer, ggml_tensor* k, ggml_tensor* v, ggml_tensor* slots);
    // Slot indices (inside the writable chunk) of the next n tokens, for write().
    std::vector<int32_t> next_slots(int n) const;
    // Views of tokens [begin, end) of one layer, chunk by chunk. Tokens written in this graph are
    // read through their write.
    std::vector<KVSegment> view(GraphBuilder& g, int layer, int64_t begin, int64_t end) const;
    // Host bookkeeping after a graph that wrote n tokens has run.
    void commit(int n);
    // A new graph starts: forget the write nodes of the previous one.
    void begin_graph() { written_.assign(written_.size(), {nullptr, nullptr}); }

    int64_t size() const { return n_tokens_; }
    // Bytes one token takes in D (keys and values of every layer).
    double bytes_per_token() const {
        return 2.0 * shape_.n_layer * double(ggml_row_size(type_, shape_.row()));
    }
    size_t bytes() const;
    ggml_type type() const { return type_; }
    // Shares the chunks; both sides then write only to chunks of their own.
    std::unique_ptr<DetailedCache> fork() const;

    // Session files: tensors d.k.<layer>, d.v.<layer> of shape [head_dim * n_head_kv, size()],
    // and the chunk layout, which load() rebuilds exactly (same segments, same numbers).
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
    KVShape shape_;
    const Backend& backend_;
    ggml_type type_;
    int chunk_tokens_;
    int64_t n_tokens_ = 0;
    std::vector<std::shared_ptr<Chunk>> chunks_;
    bool last_shared_ = false;  // the last chunk is shared with a fork: do not write into it
    std::vector<std::pair<ggml_tensor*, ggml_tensor*>> written_;  // per layer, this graph
};

}  // namespace statekv
