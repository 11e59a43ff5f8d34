// Weights of one GGUF file in backend buffers. A model family declares the tensors it needs
// (name, shape); load() then allocates one buffer per buffer type and reads the data.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "backend.h"
#include "io/gguf_file.h"

namespace statekv {

// What a tensor is used for decides which ggml types it may have: ggml checks shapes but not
// types, and a tensor of a type its op has no kernel for aborts the process at compute time.
enum class TensorRole {
    Matmul,      // left operand of ggml_mul_mat: a float or quantized type the device multiplies
    Embedding,   // gathered with ggml_get_rows (token table): float or quantized
    Float,       // norm weights, biases, scales, position tables: f32, f16 or bf16, stored as f32
    ConvKernel,  // patch-embedding kernel: f32 or f16 (im2col + mul_mat)
};

class WeightStore {
public:
    WeightStore(const GgufFile& file, const Backend& backend);
    ~WeightStore();
    WeightStore(const WeightStore&) = delete;
    WeightStore& operator=(const WeightStore&) = delete;

    // A tensor the model cannot run without; shape in ggml order (ne0 = row length), -1 for a
    // dimension the file decides (e.g. the vocabulary size). The role decides the types accepted
    // (ModelError naming the file, the tensor and the types expected otherwise); Matmul weights
    // may be repacked into the CPU's faster layouts. Float tensors of f16/bf16 are widened to f32
    // on load and checked to hold finite values.
    ggml_tensor* require(const std::string& name, const std::vector<int64_t>& shape,
                         TensorRole role = TensorRole::Matmul);
    // Same, but returns nullptr when the file has no such tensor.
    ggml_tensor* optional(const std::string& name, const std::vector<int64_t>& shape,
                          TensorRole role = TensorRole::Matmul);
    // A tensor already declared with require() is also used in another role (a tied output
    // projection is the token table): its type must suit that role too.
    void check_role(const ggml_tensor* t, TensorRole role) const;
    bool has(const std::string& name) const;
    [[noreturn]] void fail(const std::string& what) const { file_.fail(what); }
    const GgufFile& file() const { return file_; }

    // Allocate the buffers and read every declared tensor from the file.
    void load();

    size_t bytes() const;
    // Count of declared tensors per ggml type name, e.g. {"q8_0": 168, "f32": 121}.
    std::map<std::string, int> type_counts() const;

private:
    const GgufFile& file_;
    const Backend& backend_;
    struct Entry {
        ggml_tensor* tensor;
        size_t offset;        // of its data in the file's data section
        ggml_type file_type;  // type in the file (differs from tensor->type when widened to f32)
        bool float_role;      // TensorRole::Float: widened to f32 and checked finite on load
    };
    std::vector<Entry> entries_;
    std::map<ggml_backend_buffer_type_t, ggml_context*> ctxs_;
    std::vector<ggml_backend_buffer_t> buffers_;
};

}  // namespace statekv
