// What a piece of session state (the detailed cache, a cache policy) saves and loads: named
// integers, flags, integer arrays, and tensors whose bytes are streamed from / to device
// tensors. The state types write to these interfaces and never see the file format; the one
// format is the GGUF session file of io/session_file.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ggml.h"

namespace statekv {

class StateOut {
public:
    virtual ~StateOut() = default;
    virtual void put_int(const std::string& key, int64_t value) = 0;
    virtual void put_bool(const std::string& key, bool value) = 0;
    virtual void put_int_array(const std::string& key, const std::vector<int64_t>& values) = 0;
    // A byte range of a device tensor.
    struct Piece {
        const ggml_tensor* src;
        size_t offset;
        size_t nbytes;
    };
    // Stored tensor `name` (type, shape) whose bytes are the concatenation of `pieces`, read from
    // the device when the state is written.
    virtual void put_tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape,
                            std::vector<Piece> pieces) = 0;
};

// Every getter refuses (ModelError naming the source) a missing, mistyped or out-of-range field.
class StateIn {
public:
    virtual ~StateIn() = default;
    virtual int64_t get_int(const std::string& key, int64_t lo, int64_t hi) const = 0;
    virtual bool get_bool_or(const std::string& key, bool fallback) const = 0;
    virtual std::vector<int64_t> get_int_array(const std::string& key, int64_t lo, int64_t hi) const = 0;
    // Checks that stored tensor `name` exists with this type and shape.
    virtual void expect_tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape) const = 0;
    // Copies bytes [src_offset, src_offset + nbytes) of stored tensor `name` to dst at dst_offset
    // (refusing non-finite values).
    virtual void read(const std::string& name, size_t src_offset, ggml_tensor* dst, size_t dst_offset,
                      size_t nbytes) const = 0;
    // "<source>: <what>" as a ModelError: the state is inconsistent.
    [[noreturn]] virtual void fail(const std::string& what) const = 0;
};

}  // namespace statekv
