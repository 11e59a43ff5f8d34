// Model internals shared by the model's own entry points and the sessions.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "gguf_file.h"
#include "graph.h"
#include "models/text_model.h"
#include "models/vision_model.h"
#include "statekv/statekv.h"
#include "weights.h"

namespace statekv {

struct Model::Impl {
    Impl(const std::string& path, const ModelOptions& options);
    ~Impl();

    std::string path;
    Backend backend;
    GgufFile file;
    WeightStore weights;
    std::unique_ptr<TextModel> text;
    ggml_backend_sched_t sched = nullptr;
    static constexpr size_t kMaxNodes = 32768;

    // Vision (optional): the mmproj file, its weights, the encoder, and the last encoder graph
    // (rebuilt only when the batch shape changes).
    std::unique_ptr<GgufFile> mmproj_file;
    std::unique_ptr<WeightStore> mmproj_weights;
    std::unique_ptr<VisionModel> vision;
    ggml_backend_sched_t vision_sched = nullptr;
    struct VisionGraph {
        int n = -1, h = -1, w = -1;
        std::unique_ptr<GraphBuilder> g;
        ggml_tensor* pixels = nullptr;
        ggml_tensor* out = nullptr;
    } vision_graph;
    const VisionModel& require_vision() const;

    // Checks a batch against the model (ids, positions, embeddings, rows); InputError if bad.
    void validate(const Tokens& in) const;
    // Graph inputs for a batch. default_pos0: first position when none are given.
    // output_rows: rows whose logits are wanted (empty: all).
    DecoderInputs make_inputs(GraphBuilder& g, const Tokens& in, int default_pos0,
                              const std::vector<int32_t>& output_rows) const;
    // Identifies the model a session file belongs to: architecture, sizes, and a hash of the
    // first bytes of the embedding table and of the output norm.
    std::string fingerprint() const;

    // Largest position over all axes of a batch (default positions included).
    int last_position(const Tokens& in, int default_pos0) const;

    // Allocate, upload, compute on the model's scheduler; copy `out` (F32) to the host.
    std::vector<float> compute(GraphBuilder& g, ggml_tensor* out);

    // InputError when a call would need more than the device's memory (checked before
    // allocating, so a long prompt fails with a message instead of growing until the OS kills it).
    void check_memory(double bytes, const std::string& what) const;
    // Bytes one prefill graph of n_tokens over n_kv keys with n_logit_rows output rows needs.
    double prefill_bytes(int64_t n_tokens, int64_t n_kv, int64_t n_logit_rows) const;
    // ModelError naming the file when a computed output holds NaN or inf: a bad file, never an
    // answer.
    void check_finite(const std::vector<float>& out, const std::string& file_path, const char* what) const;

    std::string threads_note;  // why the thread count differs from the one asked for
};

// Allocate, upload and compute a graph on a scheduler; returns `out` (F32, may be nullptr) on the
// host. Everything the graph must compute besides `out` has been expanded into it already.
std::vector<float> run_graph(ggml_backend_sched_t sched, GraphBuilder& g, ggml_tensor* out, const Backend& backend);



}  // namespace statekv
