// Session files: a session's state (detailed cache, carried state, positions) in a GGUF-format
// file. Metadata says which model it belongs to; tensor data is streamed from the device piece by
// piece, so saving never holds a second copy of the detailed cache in memory.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gguf_file.h"
#include "graph.h"

struct gguf_context;

namespace statekv {

// Checksum of a session file's payload (the tensor data, in file order): 64-bit words mixed by
// bijective steps, so any change confined to one word (a flipped bit, a zeroed block of 8 bytes)
// always changes the result; at several GB/s it adds little to saving and loading.
class PayloadHash {
public:
    void update(const void* data, size_t n);
    uint64_t value() const;

private:
    uint64_t h_ = 0x6a09e667f3bcc909ull;
    uint64_t pending_ = 0;  // bytes of an incomplete word, little-endian
    int n_pending_ = 0;
    uint64_t total_ = 0;
    static uint64_t mix(uint64_t h, uint64_t w);
};

constexpr const char* kPayloadChecksumKey = "statekv.payload.checksum";

class StateWriter {
public:
    StateWriter();
    ~StateWriter();
    StateWriter(const StateWriter&) = delete;
    StateWriter& operator=(const StateWriter&) = delete;

    gguf_context* kv() const { return gguf_; }
    // A byte range of a device tensor.
    struct Piece {
        const ggml_tensor* src;
        size_t offset;
        size_t nbytes;
    };
    // Tensor `name` of the file (type, shape) whose data is the concatenation of `pieces`.
    void add_tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape, std::vector<Piece> pieces);
    // Writes to path + ".partial", then renames: a failed save leaves no file behind.
    void write(const std::string& path) const;

private:
    gguf_context* gguf_ = nullptr;
    ggml_context* meta_ = nullptr;
    std::vector<std::vector<Piece>> pieces_;
};

class StateReader {
public:
    explicit StateReader(const std::string& path) : file_(path) {}
    const GgufFile& file() const { return file_; }
    // Refuses (ModelError naming the file) a payload whose checksum differs from the one stored.
    void verify_checksum() const;
    // The stored tensor `name` with its expected type and shape; ModelError naming the file
    // otherwise.
    const ggml_tensor* tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape) const;
    // Copies bytes [src_offset, src_offset + nbytes) of stored tensor `name` to dst at dst_offset.
    void read(const std::string& name, size_t src_offset, ggml_tensor* dst, size_t dst_offset, size_t nbytes) const;

private:
    GgufFile file_;
};

}  // namespace statekv
