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
    // The stored tensor `name` with its expected type and shape; ModelError naming the file
    // otherwise.
    const ggml_tensor* tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape) const;
    // Copies bytes [src_offset, src_offset + nbytes) of stored tensor `name` to dst at dst_offset.
    void read(const std::string& name, size_t src_offset, ggml_tensor* dst, size_t dst_offset, size_t nbytes) const;

private:
    GgufFile file_;
};

}  // namespace statekv
