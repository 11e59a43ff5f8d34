// statekv: linear-time long-video VLM inference on ggml.
//
// Public C++ API. Usable from a desktop application without Python.
//
// Example: load a llama.cpp text GGUF and compute logits / greedy continuation.
//
//     #include <statekv/statekv.h>
//     statekv::Model model("Qwen2.5-0.5B-Q8_0.gguf", {/*device*/ "", /*threads*/ 4});
//     statekv::Tokens prompt;
//     prompt.ids = {9707, 11, 1879, 0};
//     std::vector<float> logits = model.logits(prompt);   // prompt.ids.size() x n_vocab
//     std::vector<int32_t> answer = model.generate(prompt, 16);
//
// Errors: a file that cannot be run throws statekv::ModelError (the message names the file,
// the key or tensor, and what was expected); bad arguments throw statekv::InputError. Files are
// never trusted: every tensor's type and shape is checked against its role, every
// hyper-parameter against its range, before anything is allocated; session files carry a
// checksum of their data. NaN or inf from a file or an input is an error, never an answer.
//
// Threads: one Model may be used from several threads at once, and gives the same results as
// sequential use. The model's backend runs one graph at a time (a lock around each graph's
// allocation and computation), so concurrent calls interleave graph by graph. The vision encoder's
// graph is cached on the model: encode_frames and Session::add_frames hold the model's vision lock
// for their whole call (add_frames until its steps, which read the encoder's output in place, are
// committed). Each Session has its own lock: calls on one session from several threads are
// serialized; different sessions proceed concurrently between graphs. A TokenCallback runs on the
// calling thread with no lock of the model held, but with the session's lock held: it must not
// call back into the same session.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace statekv {

// A model file that statekv cannot run: unreadable, corrupt, truncated, unknown architecture,
// missing or mis-shaped tensor, mismatched pair of files.
class ModelError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// An argument that does not fit the model or the session (wrong width, out-of-range rows,
// positions, a budget of 0, a context overflow). The object stays usable.
class InputError : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

struct DeviceInfo {
    std::string name;         // e.g. "CPU", "CUDA0"
    std::string description;  // backend's description of the device
    std::string type;         // "cpu", "gpu", "igpu", "accel"
    size_t memory_free = 0;
    size_t memory_total = 0;
};

// Devices that ggml-backend offers in this build.
std::vector<DeviceInfo> backends();

// The ggml that runs: "version", "library" (path of the ggml library), "origin" (the source it was built
// from), "cpu_variant" (the CPU module chosen for this machine, e.g. "haswell"), "cpu_module" (its
// path), "cpu_features" (what it was compiled for, e.g. "AVX2,FMA,LLAMAFILE,OPENMP"), "modules"
// (every backend module loaded), "packed_gemm_lanes" (the vector width of statekv's own CPU
// product of F16/Q8_0 weights: 16 with AVX-512, else 8; STATEKV_GEMM_LANES=8|16 forces one). The
// best CPU variant is chosen at the first use of ggml; the environment variable
// STATEKV_CPU_VARIANT=<name> forces one (for benchmarks). ggml's own
// informational log lines are shown with STATEKV_GGML_LOG=1 (warnings and errors always).
std::map<std::string, std::string> ggml_info();

struct ModelOptions {
    std::string device;  // device name from backends(); empty: best GPU, else CPU
    int threads = 0;     // CPU threads; 0: all hardware threads; more than 2x the hardware
                         // threads is capped (info()["threads_note"] says so)
    std::string mmproj;  // optional vision encoder + projector GGUF (llama.cpp's mmproj file)
    // Whether the vision encoder gets its own backend instance (on a GPU: its own stream), so
    // that frames are encoded while a session runs the steps of earlier frames: -1 auto (yes on
    // a GPU; no on the CPU, where both would compete for the same cores), 0 no, 1 yes.
    int overlap_encoder = -1;
};

// One sequence of tokens to feed the decoder.
struct Tokens {
    std::vector<int32_t> ids;
    // Absolute positions: empty (0, 1, ... after whatever came before), n values, or for
    // multi-axis RoPE models n_axes * n values, axis-major (as transformers' position_ids[:, 0]).
    std::vector<int32_t> positions;
    int n_position_axes = 1;
    // Rows of the input embedding to replace (e.g. visual tokens). embeddings holds
    // embedding_rows.size() rows of width n_embd, or n_embd * (1 + n_deepstack) for models with
    // DeepStack (llama.cpp's layout: slice 0 replaces the token embedding, slice l+1 is added to
    // the hidden state after decoder layer l).
    std::vector<float> embeddings;
    std::vector<int32_t> embedding_rows;
    // Bidirectional blocks (Gemma 3's images): empty, or one value per token; the tokens that share
    // a value > 0 form one contiguous block whose tokens see each other in both directions (within
    // a sliding layer's window); 0: causal. Taken by Model::logits and by a session's prefill,
    // add_step and add_frames; a block never spans two batches.
    std::vector<int32_t> blocks;
};

struct GenerateOptions {
    std::string kv_type = "f16";     // KV cache type: f32, f16, q8_0
    std::vector<int32_t> stop;       // extra stop token ids
    bool ignore_eos = false;         // by default generation stops at the model's end-of-turn ids
};

// Returns false to stop generation early.
using TokenCallback = std::function<bool(int32_t token)>;

struct PromptBenchResult {
    int n_prompt = 0;
    int n_depth = 0;
    std::vector<double> seconds;  // one per repetition
};

class Session;
struct SessionOptions;

// The mmproj's image geometry and pixel normalization (Model::vision_info).
struct VisionInfo {
    std::string projector;     // clip.projector_type
    int image_size = 0;        // fixed frame side in pixels, 0 when variable
    int patch_size = 0;
    int size_multiple = 0;     // frame height and width must be multiples of it
    int frames_per_patch = 1;  // frames per temporal patch (one step's visual rows)
    int n_deepstack = 0;       // DeepStack slices per visual row
    int row_width = 0;         // floats per visual row: n_embd * (1 + n_deepstack)
    std::vector<float> image_mean, image_std;  // per RGB channel, as stored in the mmproj (f32)
};

class Model {
public:
    explicit Model(const std::string& text_gguf, const ModelOptions& options = {});
    ~Model();
    Model(const Model&) = delete;
    Model& operator=(const Model&) = delete;

    // One stateless full-attention prefill; returns ids.size() * n_vocab floats, row-major.
    std::vector<float> logits(const Tokens& input);

    // Greedy decoding with a KV cache; returns the new tokens.
    std::vector<int32_t> generate(const Tokens& prompt, int max_tokens,
                                  const GenerateOptions& options = {},
                                  const TokenCallback& on_token = nullptr);

    // Prompt processing as llama-bench measures it: fill the KV cache to n_depth tokens, then
    // time the prefill of n_prompt more tokens (flash attention, kv_type cache), `repetitions`
    // times.
    PromptBenchResult bench_prompt(int n_prompt, int n_depth, int repetitions,
                                   const std::string& kv_type = "f16", int n_ubatch = 512);

    // A StateKV session (video state) over this model; see Session.
    std::unique_ptr<Session> session(const SessionOptions& options);
    // A session saved with Session::save. Refuses (ModelError naming the file) a file that is not
    // a session file, is truncated or corrupt (payload checksum, header fields inconsistent with
    // each other or with the data), or was saved from another model.
    std::unique_ptr<Session> load_session(const std::string& path);

    // Architecture, sizes, types, device, as strings/numbers.
    std::map<std::string, std::string> info() const;

    int n_vocab() const;
    int n_embd() const;

    // Vision (needs ModelOptions::mmproj). pixels: n_frames x 3 x height x width floats,
    // preprocessed as the family's processor does. Returns the visual rows of each temporal
    // patch, row-major: n_patches x tokens_per_patch x row_width, where row_width is n_embd, or
    // n_embd * (1 + n_deepstack) with DeepStack features (llama.cpp's layout).
    // Session::add_frames does the same from bytes without the rows leaving the device.
    std::vector<float> encode_frames(const float* pixels, int n_frames, int height, int width);
    bool has_vision() const;
    // True when the vision encoder runs on its own backend instance (ModelOptions::overlap_encoder):
    // encode_frames then runs concurrently with sessions' steps instead of waiting for them.
    bool encoder_overlaps() const;
    int vision_tokens_per_patch(int height, int width) const;
    int vision_row_width() const;
    int vision_frames_per_patch() const;
    // The mmproj's geometry and normalization constants (read once, when the mmproj loads).
    VisionInfo vision_info() const;

private:
    friend class Session;
    struct Impl;                  // opaque (cpp/src/model_impl.h)
    std::shared_ptr<Impl> impl_;  // shared with sessions that outlive the handle
};

// How a session keeps its video state.
struct SessionOptions {
    std::string mode = "statekv";  // "full" | "window" | "statekv"
    int budget = 4096;             // statekv: B, kept (key, value) pairs per layer and KV head
    int window = 16;               // window: R, the number of most recent steps kept
    std::string kv_type = "f16";   // detailed cache type: f32, f16, q8_0 (carried state: f32 if
                                   // kv_type is f32, else f16)
    // Long videos. expected_length > 0: total tokens expected (video + question + answer); when it
    // exceeds the trained context, the rotary base is scaled with dynamic NTK as the StateKV
    // authors do. rope_scale > 1: a fixed NTK factor for open-ended streams. Both 0: no scaling.
    int expected_length = 0;
    float rope_scale = 0.0f;
    // Tokens per chunk of the detailed cache (it grows chunk by chunk without moving what it
    // holds). 0: expected_length (at least 4096) when given, else 16384.
    int detailed_chunk = 0;
    // Variants of the statekv selection rule (docs/DESIGN.md section 1, "Policy variants"; mode
    // statekv only, InputError otherwise). The defaults are the paper's rule.
    // score_decay d in [0, 1): 0 scores a key by the current step's attention mass only; d > 0
    // carries an accumulated score per kept key, s <- d * s + s_step, and selects by it.
    float score_decay = 0.0f;
    // pin_prefix: the prefix stays in C (it counts toward the budget) and only the video's
    // tokens compete for the rest of it.
    bool pin_prefix = false;
};

struct SamplingOptions {
    float temperature = 0.0f;  // 0: greedy
    int top_k = 0;             // 0: off
    float top_p = 1.0f;        // 1: off
    float min_p = 0.0f;        // 0: off
    float repeat_penalty = 1.0f;  // 1: off; applied to the last repeat_last_n question/answer tokens
    int repeat_last_n = 64;
    uint64_t seed = 0xC0FFEE;
    std::vector<int32_t> stop;    // extra stop token ids (end-of-turn ids always stop)
    bool ignore_eos = false;
};

struct SessionStats {
    int64_t tokens_detailed = 0;       // tokens in D (prefix + steps)
    int64_t tokens_carried = 0;        // tokens in C per layer and KV head
    int64_t steps = 0;
    size_t bytes_detailed = 0;         // allocated bytes of D (all chunks)
    size_t bytes_carried = 0;          // allocated bytes of C
    std::vector<double> step_seconds;  // wall time of each add_step
};

// The video state of one conversation. Frame steps enter with add_step (visual rows given) or
// add_frames (pixels given); questions read the detailed cache and never change the state.
//
//     auto s = model.session({"statekv", /*budget*/ 4096});
//     s->prefill(system_and_user_header);
//     for (auto& frame : frames) s->add_step(frame);   // constant cost per step
//     s->add_frames(rgb, 2, 448, 448, {step1, step2}); // or: pixels in, rows stay on the device
//     auto answer = s->generate(question, 128, {});
class Session {
public:
    ~Session();
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // Prefix tokens (system prompt, user header): full causal attention, into D and C. Only
    // before the first step.
    void prefill(const Tokens& tokens);
    // One frame step: attends to C and itself; enters D; C is re-selected.
    void add_step(const Tokens& tokens);
    // Frames to committed steps without their visual rows leaving the device. pixels: n_frames x
    // height x width x 3 bytes (RGB, row-major HWC per frame, frames in order), already resized to
    // the model's input geometry (vision_info()); normalization (the mmproj's mean/std, rescaled as
    // the family's processor does) happens in the encoder graph. steps: one per temporal patch
    // (n_frames / frames_per_patch), each a step's tokens as add_step takes them, with
    // embedding_rows naming where that patch's tokens_per_patch visual rows go, in the encoder's
    // row order, and embeddings empty. Every step is checked before anything runs; they are then
    // committed in order, as add_step would (the encoder's time is shared equally among their
    // step_seconds). InputError for bad pixels, steps or a model without an mmproj.
    void add_frames(const uint8_t* pixels, int n_frames, int height, int width, const std::vector<Tokens>& steps);
    // Logits (n x n_vocab) of question tokens attending over all of D; the state is unchanged.
    // last_rows > 0: only the last last_rows rows (last_rows x n_vocab), e.g. 1 to score what
    // follows the question, or a candidate answer's length to score that answer.
    std::vector<float> question_logits(const Tokens& question, int last_rows = 0);
    // Question then sampled answer over all of D; the state is unchanged.
    std::vector<int32_t> generate(const Tokens& question, int max_tokens, const SamplingOptions& options,
                                  const TokenCallback& on_token = nullptr);
    // Kept token indices of one layer: n_head_kv rows of n_kept indices (entry order, from 0).
    std::vector<int32_t> carried(int layer, int* n_kept);
    std::unique_ptr<Session> fork() const;
    // Everything needed to continue or ask later (options, positions, D, C) to one file,
    // written to a temporary name and renamed when complete. `app_data` is stored verbatim
    // (e.g. a chat front end's own bookkeeping) and comes back from app_data() after loading.
    void save(const std::string& path, const std::string& app_data = {}) const;
    const std::string& app_data() const;
    const SessionOptions& options() const;
    SessionStats stats() const;
    int64_t n_tokens() const;     // tokens entered (prefix + steps)
    int next_position() const;    // first position after everything entered

private:
    friend class Model;
    struct Impl;  // opaque (cpp/src/session.cpp)
    explicit Session(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace statekv
