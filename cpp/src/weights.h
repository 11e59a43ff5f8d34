// Weights of one GGUF file in backend buffers. A model family declares the tensors it needs
// (name, shape); load() then allocates one buffer per buffer type and reads the data.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "backend.h"
#include "gguf_file.h"

namespace statekv {

class WeightStore {
public:
    WeightStore(const GgufFile& file, const Backend& backend);
    ~WeightStore();
    WeightStore(const WeightStore&) = delete;
    WeightStore& operator=(const WeightStore&) = delete;

    // A tensor the model cannot run without; shape in ggml order (ne0 = row length), -1 for a
    // dimension the file decides (e.g. the vocabulary size). `matmul`
    // says the weight is the left operand of a matrix multiplication (it may be repacked).
    ggml_tensor* require(const std::string& name, const std::vector<int64_t>& shape, bool matmul = true);
    // Same, but returns nullptr when the file has no such tensor.
    ggml_tensor* optional(const std::string& name, const std::vector<int64_t>& shape, bool matmul = true);
    bool has(const std::string& name) const;

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
        size_t offset;  // of its data in the file's data section
    };
    std::vector<Entry> entries_;
    std::map<ggml_backend_buffer_type_t, ggml_context*> ctxs_;
    std::vector<ggml_backend_buffer_t> buffers_;
};

}  // namespace statekv
