// A graph under construction and its inputs. Graphs run through graph/run.h.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ggml.h"

namespace statekv {

// A graph under construction plus the host data of its inputs, uploaded after allocation.
class GraphBuilder {
public:
    // `on_cpu`: the graph runs on the CPU backend (see on_cpu below).
    GraphBuilder(size_t max_nodes, bool on_cpu);
    ~GraphBuilder();
    GraphBuilder(const GraphBuilder&) = delete;
    GraphBuilder& operator=(const GraphBuilder&) = delete;

    ggml_context* ctx() const { return ctx_; }
    ggml_cgraph* graph() const { return gf_; }

    // A graph input; `bytes` is copied now and uploaded by upload_inputs().
    ggml_tensor* input(ggml_type type, std::vector<int64_t> shape, const void* bytes, const char* name);
    ggml_tensor* input_i32(const std::vector<int32_t>& v, const char* name);
    ggml_tensor* input_f32(const std::vector<float>& v, std::vector<int64_t> shape, const char* name);
    // An input every layer of the graph shares (a mask, a column of ones, or a node computed once
    // from one, such as a widened mask): made by `make` the first time `key` is asked for, reused
    // afterwards, so it is built and uploaded once.
    ggml_tensor* shared_input(const std::string& key, const std::function<ggml_tensor*()>& make);
    // An input whose data the caller writes once the graph is allocated (large inputs of a graph
    // that is run again with new values: no host copy is kept).
    ggml_tensor* input_late(ggml_type type, std::vector<int64_t> shape, const char* name);
    void upload_inputs();
    // A leaf of this graph over rows [first, first + n) of a contiguous 2-D tensor that another
    // graph computed and still holds (read in place: the other graph is neither re-run nor
    // copied, and its memory must stay allocated until this graph has run).
    ggml_tensor* alias_rows(const ggml_tensor* t, int64_t first, int64_t n, const char* name);

    void expand(ggml_tensor* t) { ggml_build_forward_expand(gf_, t); }

    // The bidirectional blocks of the batch this graph computes (Tokens::blocks; empty: causal),
    // read by the mask builder.
    void set_batch_blocks(std::vector<int32_t> blocks) { batch_blocks_ = std::move(blocks); }
    const std::vector<int32_t>& batch_blocks() const { return batch_blocks_; }

    // The graph runs on the CPU backend, so statekv's own CPU kernels (ggml custom ops, see
    // graph/exact_activations.h) may be used; other devices get ggml's built-in ops.
    const bool on_cpu;

private:
    std::vector<int32_t> batch_blocks_;
    ggml_context* ctx_ = nullptr;
    ggml_cgraph* gf_ = nullptr;
    struct PendingInput {
        ggml_tensor* tensor;
        std::vector<uint8_t> bytes;
    };
    std::vector<PendingInput> inputs_;
    std::map<std::string, ggml_tensor*> shared_;
};

}  // namespace statekv
