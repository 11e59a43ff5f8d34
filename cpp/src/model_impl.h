// Model internals shared by the model's own entry points and the sessions.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "graph/builder.h"
#include "io/gguf_file.h"
#include "io/weights.h"
#include "models/text_model.h"
#include "models/vision_model.h"
#include "statekv/statekv.h"

namespace statekv {

// Visual rows already on the device (the vision encoder's output, read in place): rows
// [first, first + k) of `rows` [row_width, *], for a batch's k embedding_rows.
struct DeviceRows {
    ggml_tensor* rows = nullptr;
    int64_t first = 0;
};

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
    // (rebuilt only when the input kind or the batch shape changes).
    std::unique_ptr<GgufFile> mmproj_file;
    std::unique_ptr<WeightStore> mmproj_weights;
    std::unique_ptr<VisionModel> vision;
    ggml_backend_sched_t vision_sched = nullptr;
    // The encoder's own backend instance (same device, own stream and compute lock) when the
    // encoder overlaps the steps; null: the encoder shares `backend`.
    std::unique_ptr<Backend> vision_backend;
    Backend& encoder_backend() { return vision_backend ? *vision_backend : backend; }
    enum class PixelKind { Normalized, Bytes };
    struct VisionGraph {
        PixelKind kind = PixelKind::Normalized;
        int n = -1, h = -1, w = -1;
        std::unique_ptr<GraphBuilder> g;
        ggml_tensor* input = nullptr;   // F32 [W, H, 3, n], or I32 byte ids [W * H * 3 * n]
        ggml_tensor* out = nullptr;     // rows [row_width, n_rows]
        ggml_tensor* finite = nullptr;  // Bytes: a scalar that is NaN iff `out` holds NaN or inf
    } vision_graph;
    // Held while the encoder graph is built, run, and its output read (by copy, or in place by
    // the steps of Session::add_frames). Taken before the backend's compute lock.
    std::mutex vision_mutex;
    const VisionModel& require_vision() const;
    // Runs the encoder over n frames (pixels as `kind` says: floats n x 3 x h x w, or bytes
    // n x h x w x 3) and returns its graph, `out` computed. The caller holds vision_mutex.
    const VisionGraph& encode(PixelKind kind, const void* pixels, int n, int h, int w);

    // Checks a batch against the model (ids, positions, embeddings, rows); InputError if bad.
    // rows_on_device: the visual rows come as DeviceRows (embeddings must be empty).
    // takes_blocks: the call computes Tokens::blocks (logits, prefill, steps); others refuse them.
    void validate(const Tokens& in, bool rows_on_device = false, bool takes_blocks = false) const;
    // Graph inputs for a batch. default_pos0: first position when none are given.
    // output_rows: rows whose logits are wanted (empty: all). device_rows: the batch's visual
    // rows on the device instead of in.embeddings.
    DecoderInputs make_inputs(GraphBuilder& g, const Tokens& in, int default_pos0, const std::vector<int32_t>& output_rows,
                              const DeviceRows* device_rows = nullptr) const;
    // Identifies the model a session file belongs to: architecture, sizes, and a hash of the
    // first bytes of the embedding table and of the output norm.
    std::string fingerprint() const;

    // Largest position over all axes of a batch (default positions included).
    int last_position(const Tokens& in, int default_pos0) const;

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

}  // namespace statekv
