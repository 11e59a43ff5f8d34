// Reading a GGUF file's metadata and tensor table with ggml's gguf.h, with errors that name the
// file, the key or tensor, and what was expected.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "statekv/statekv.h"

struct gguf_context;
struct ggml_context;
struct ggml_tensor;

namespace statekv {

class GgufFile {
public:
    explicit GgufFile(const std::string& path);
    ~GgufFile();
    GgufFile(const GgufFile&) = delete;
    GgufFile& operator=(const GgufFile&) = delete;

    const std::string& path() const { return path_; }
    gguf_context* ctx() const { return ctx_; }
    // Tensor metadata (type, shape) as ggml tensors without data; nullptr if absent.
    ggml_tensor* tensor_meta(const std::string& name) const;
    size_t file_size() const { return file_size_; }
    size_t data_offset() const;

    bool has(const std::string& key) const;
    std::string get_str(const std::string& key) const;
    uint32_t get_u32(const std::string& key) const;  // accepts any integer type that fits
    float get_f32(const std::string& key) const;     // accepts f32/f64
    bool get_bool(const std::string& key) const;

    // An integer of any GGUF integer type (unsigned 64-bit values read as such, never wrapped)
    // within [lo, hi]; ModelError naming the key, the value and the range otherwise.
    int64_t get_int(const std::string& key, int64_t lo, int64_t hi) const;
    int64_t get_int_or(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) const;
    // A finite float > 0 (epsilons, rotary bases, scale factors), at most `hi`.
    float get_positive_f32(const std::string& key, float hi) const;
    float get_positive_f32_or(const std::string& key, float fallback, float hi) const;
    // Integers of an array within [lo, hi] each; the array's element type must be an integer type.
    std::vector<int64_t> get_int_array(const std::string& key, int64_t lo, int64_t hi) const;
    // An array of exactly n finite floats (f32 or f64 elements).
    std::vector<float> get_finite_f32_array(const std::string& key, size_t n) const;
    // An array of booleans.
    std::vector<bool> get_bool_array(const std::string& key) const;
    // Indices of the entries of a string array (e.g. tokenizer.ggml.tokens) equal to one of
    // `wanted`, ascending; empty when the key is absent or not a string array.
    std::vector<int64_t> indices_of_strings(const std::string& key, const std::vector<std::string>& wanted) const;
    // Layers the file has tensors for: 1 + the largest N of "<prefix>N." tensor names (0 if none),
    // so a block_count is bounded by what is there before anything is sized from it. A name with
    // the prefix but no index is an error.
    int64_t layers_with_prefix(const std::string& prefix) const;
    bool get_bool_or(const std::string& key, bool fallback) const;

    // "<file>: <what>" as a ModelError.
    [[noreturn]] void fail(const std::string& what) const;

private:
    int64_t key_id(const std::string& key) const;
    // The one array reader: the id of `key`, checked to be an array whose element type is one of
    // `types` (checked before any element is touched: gguf_get_arr_data aborts on string arrays);
    // ModelError naming the key and `expected` otherwise.
    int64_t array_id(const std::string& key, std::initializer_list<int> types, const std::string& expected) const;
    std::string path_;
    gguf_context* ctx_ = nullptr;
    ggml_context* meta_ = nullptr;
    size_t file_size_ = 0;
};

}  // namespace statekv
