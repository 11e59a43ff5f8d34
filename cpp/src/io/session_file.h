// Session files: a session's state (detailed cache, carried state, positions) in a GGUF-format
// file. Metadata says which model it belongs to; tensor data is streamed from the device piece by
// piece, so saving never holds a second copy of the detailed cache in memory.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "io/gguf_file.h"
#include "io/state_io.h"

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

// The GGUF writer of StateOut: keys into the file's metadata, tensors into its data section.
class StateWriter final : public StateOut {
public:
    StateWriter();
    ~StateWriter();
    StateWriter(const StateWriter&) = delete;
    StateWriter& operator=(const StateWriter&) = delete;

    // The file's metadata, for the session's own header fields.
    gguf_context* kv() const { return gguf_; }
    void put_int(const std::string& key, int64_t value) override;
    void put_bool(const std::string& key, bool value) override;
    void put_int_array(const std::string& key, const std::vector<int64_t>& values) override;
    void put_tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape,
                    std::vector<Piece> pieces) override;
    // Writes to path + ".partial", then renames: a failed save leaves no file behind.
    void write(const std::string& path) const;

private:
    gguf_context* gguf_ = nullptr;
    ggml_context* meta_ = nullptr;
    std::vector<std::vector<Piece>> pieces_;
};

// The GGUF reader of StateIn; errors name the file.
class StateReader final : public StateIn {
public:
    explicit StateReader(const std::string& path) : file_(path) {}
    const GgufFile& file() const { return file_; }
    // Refuses (ModelError naming the file) a payload whose checksum differs from the one stored.
    void verify_checksum() const;
    int64_t get_int(const std::string& key, int64_t lo, int64_t hi) const override { return file_.get_int(key, lo, hi); }
    bool get_bool_or(const std::string& key, bool fallback) const override { return file_.get_bool_or(key, fallback); }
    std::vector<int64_t> get_int_array(const std::string& key, int64_t lo, int64_t hi) const override {
        return file_.get_int_array(key, lo, hi);
    }
    void expect_tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape) const override;
    void read(const std::string& name, size_t src_offset, ggml_tensor* dst, size_t dst_offset, size_t nbytes) const override;
    [[noreturn]] void fail(const std::string& what) const override { file_.fail(what); }

private:
    GgufFile file_;
};

}  // namespace statekv
