#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "generate.h"
#include "graph/run.h"
#include "memory/kv_cache.h"
#include "model_impl.h"
#include "models/registry.h"

namespace statekv {

namespace {

// More threads than the machine has only adds spinning at ggml's barriers, and thousands abort
// in thread creation: requests above a multiple of the hardware threads are capped.
constexpr int kThreadsPerCore = 2;

int hardware_threads() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

int capped_threads(int requested) {
    if (requested < 0) throw InputError("threads must be >= 0 (0 = all cores), got " + std::to_string(requested));
    return std::min(requested, kThreadsPerCore * hardware_threads());
}

}  // namespace

Model::Impl::Impl(const std::string& p, const ModelOptions& options)
    : path(p), backend(options.device, capped_threads(options.threads)), file(p), weights(file, backend) {
    if (options.threads > backend.threads()) {
        threads_note = "threads capped at " + std::to_string(backend.threads()) + " (" + std::to_string(kThreadsPerCore) +
                       " x " + std::to_string(hardware_threads()) + " hardware threads); " +
                       std::to_string(options.threads) + " requested";
        std::fprintf(stderr, "statekv: %s\n", threads_note.c_str());
    }
    text = load_text_model(file, weights);
    weights.load();
    sched = backend.new_scheduler(kMaxNodes);
    if (!options.mmproj.empty()) {
        mmproj_file = std::make_unique<GgufFile>(options.mmproj);
        mmproj_weights = std::make_unique<WeightStore>(*mmproj_file, backend);
        vision = load_vision_model(*mmproj_file, *mmproj_weights);
        check_pair(*vision, options.mmproj, *text, p);
        mmproj_weights->load();
        // Weights live in the device's buffers, which every backend instance of that device
        // reads; a second instance only adds a stream (GPU) or a thread pool (CPU).
        const bool overlap = options.overlap_encoder < 0 ? !backend.is_cpu() : options.overlap_encoder > 0;
        if (overlap) vision_backend = std::make_unique<Backend>(backend.device_name(), backend.threads());
        vision_sched = encoder_backend().new_scheduler(kMaxNodes);
    }
}

Model::Impl::~Impl() {
    vision_graph.g.reset();
    if (vision_sched) ggml_backend_sched_free(vision_sched);
    if (sched) ggml_backend_sched_free(sched);
}

const VisionModel& Model::Impl::require_vision() const {
    if (!vision) throw InputError(path + " was loaded without an mmproj file: no vision encoder to encode frames");
    return *vision;
}

void Model::Impl::validate(const Tokens& in, bool rows_on_device, bool takes_blocks) const {
    const auto& hp = text->hp;
    const size_t n = in.ids.size();
    if (n == 0) throw InputError("empty token sequence");
    for (size_t i = 0; i < n; ++i) {
        if (in.ids[i] < 0 || in.ids[i] >= hp.n_vocab) {
            throw InputError("token id " + std::to_string(in.ids[i]) + " at index " + std::to_string(i) +
                             " is outside the vocabulary [0, " + std::to_string(hp.n_vocab) + ")");
        }
    }
    if (!in.positions.empty()) {
        if (in.n_position_axes != 1 && in.n_position_axes != hp.n_position_axes) {
            throw InputError("positions have " + std::to_string(in.n_position_axes) + " axes; this " + hp.arch +
                             " model takes 1" + (hp.n_position_axes > 1 ? " or " + std::to_string(hp.n_position_axes) : std::string()));
        }
        if (in.positions.size() != n * static_cast<size_t>(in.n_position_axes)) {
            throw InputError("positions have " + std::to_string(in.positions.size()) + " values, expected " +
                             std::to_string(n * in.n_position_axes) + " (" + std::to_string(in.n_position_axes) +
                             " axes x " + std::to_string(n) + " tokens)");
        }
        for (int32_t p : in.positions) {
            if (p < 0) throw InputError("positions must be non-negative, got " + std::to_string(p));
        }
    }
    if (!in.blocks.empty()) {
        if (!takes_blocks) {
            throw InputError("bidirectional blocks are taken by Model.logits and by a session's prefill, add_step and "
                             "add_frames only (questions and generation are causal)");
        }
        if (in.blocks.size() != n) {
            throw InputError("blocks have " + std::to_string(in.blocks.size()) + " values, expected one per token (" +
                             std::to_string(n) + ")");
        }
        std::set<int32_t> closed;  // blocks that ended: each block is one contiguous run
        for (size_t i = 0; i < n; ++i) {
            const int32_t b = in.blocks[i];
            if (b < 0) throw InputError("blocks must be >= 0 (0: causal), got " + std::to_string(b) + " at index " + std::to_string(i));
            if (b > 0 && closed.count(b)) {
                throw InputError("block " + std::to_string(b) + " is not one contiguous run of tokens (again at index " +
                                 std::to_string(i) + ")");
            }
            if (i > 0 && in.blocks[i - 1] > 0 && in.blocks[i - 1] != b) closed.insert(in.blocks[i - 1]);
        }
    }
    const size_t k = in.embedding_rows.size();
    if (k == 0 && !in.embeddings.empty()) throw InputError("embeddings given without embedding_rows");
    if (rows_on_device && !in.embeddings.empty()) {
        throw InputError("a step of add_frames takes its visual rows from the frames: give embedding_rows only, no embeddings");
    }
    if (k > 0 && !rows_on_device) {
        const size_t width = in.embeddings.size() / k;
        const size_t full = static_cast<size_t>(text->embedding_width());
        if (in.embeddings.size() % k != 0 || (width != static_cast<size_t>(hp.n_embd) && width != full)) {
            throw InputError("embeddings must have shape (" + std::to_string(k) + ", " + std::to_string(hp.n_embd) +
                             (full != static_cast<size_t>(hp.n_embd) ? " or " + std::to_string(full) : std::string()) +
                             "), got " + std::to_string(in.embeddings.size()) + " values");
        }
        for (size_t i = 0; i < in.embeddings.size(); ++i) {
            if (!std::isfinite(in.embeddings[i])) {
                throw InputError("embedding value " + std::to_string(in.embeddings[i]) + " at index " + std::to_string(i) +
                                 " is not finite (NaN or inf)");
            }
        }
    }
    std::set<int32_t> seen;
    for (int32_t r : in.embedding_rows) {
        if (r < 0 || static_cast<size_t>(r) >= n) {
            throw InputError("embedding row " + std::to_string(r) + " is out of range [0, " + std::to_string(n) + ")");
        }
        if (!seen.insert(r).second) throw InputError("embedding row " + std::to_string(r) + " appears twice");
    }
}

std::string Model::Impl::fingerprint() const {
    const auto& hp = text->hp;
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (const ggml_tensor* t : {text->tok_embd, text->output_norm}) {
        std::vector<uint8_t> bytes(std::min<size_t>(ggml_nbytes(t), size_t(1) << 20));
        ggml_backend_tensor_get(t, bytes.data(), 0, bytes.size());
        for (uint8_t b : bytes) h = (h ^ b) * 1099511628211ull;
    }
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
    return hp.arch + " n_layer=" + std::to_string(hp.n_layer) + " n_embd=" + std::to_string(hp.n_embd) +
           " n_head_kv=" + std::to_string(hp.n_head_kv) + " head_dim=" + std::to_string(hp.head_dim) +
           " n_vocab=" + std::to_string(hp.n_vocab) + " weights=" + hex;
}

int Model::Impl::last_position(const Tokens& in, int default_pos0) const {
    if (in.positions.empty()) return default_pos0 + static_cast<int>(in.ids.size()) - 1;
    return *std::max_element(in.positions.begin(), in.positions.end());
}

DecoderInputs Model::Impl::make_inputs(GraphBuilder& g, const Tokens& in, int default_pos0,
                                       const std::vector<int32_t>& output_rows, const DeviceRows* device_rows) const {
    const auto& hp = text->hp;
    const int n = static_cast<int>(in.ids.size());
    DecoderInputs d;
    d.n_tokens = n;
    d.token_ids = g.input_i32(in.ids, "token_ids");
    g.set_batch_blocks(in.blocks);
    std::vector<int32_t> pos(n);
    if (in.positions.empty()) {
        std::iota(pos.begin(), pos.end(), default_pos0);
    } else {
        std::copy(in.positions.begin(), in.positions.begin() + n, pos.begin());
    }
    if (hp.n_position_axes > 1) {
        // Four streams (t, h, w, extra). Rotary pairs outside the t/h/w sections rotate with
        // the temporal position, as transformers does (llama.cpp feeds them 0; docs/DESIGN.md
        // section 7).
        std::vector<int32_t> streams(4 * static_cast<size_t>(n));
        for (int a = 0; a < 3; ++a) {
            const bool per_axis = !in.positions.empty() && in.n_position_axes > 1;
            for (int i = 0; i < n; ++i) streams[a * n + i] = per_axis ? in.positions[a * n + i] : pos[i];
        }
        std::copy(streams.begin(), streams.begin() + n, streams.begin() + 3 * n);
        d.positions = g.input_i32(streams, "positions");
    } else {
        d.positions = g.input_i32(pos, "positions");
    }
    if (!in.embedding_rows.empty()) {
        const int k = static_cast<int>(in.embedding_rows.size());
        const int full = text->embedding_width();
        if (device_rows) {
            // The encoder's rows, read in place (their width is the full one: checked when the
            // mmproj was paired with this model).
            d.embeddings = g.alias_rows(device_rows->rows, device_rows->first, k, "embeddings");
        } else if (static_cast<int>(in.embeddings.size() / k) == full) {
            d.embeddings = g.input_f32(in.embeddings, {full, k}, "embeddings");
        } else {
            // Main slice only: DeepStack slices are zero.
            const int width = static_cast<int>(in.embeddings.size() / k);
            std::vector<float> padded(static_cast<size_t>(full) * k, 0.0f);
            for (int r = 0; r < k; ++r) std::copy_n(&in.embeddings[size_t(r) * width], width, &padded[size_t(r) * full]);
            d.embeddings = g.input_f32(padded, {full, k}, "embeddings");
        }
        d.embedding_rows = g.input_i32(in.embedding_rows, "embedding_rows");
    }
    if (!output_rows.empty()) d.output_rows = g.input_i32(output_rows, "output_rows");
    return d;
}

void Model::Impl::check_memory(double bytes, const std::string& what) const {
    size_t free = 0, total = 0;
    ggml_backend_dev_memory(backend.device(), &free, &total);
    if (free > 0 && bytes > static_cast<double>(free)) {
        char msg[256];
        std::snprintf(msg, sizeof(msg), "%s needs about %.1f GiB, more than the %.1f GiB of memory device %s has",
                      what.c_str(), bytes / double(1u << 30), double(free) / double(1u << 30), backend.device_name().c_str());
        throw InputError(msg);
    }
}

double Model::Impl::prefill_bytes(int64_t n_tokens, int64_t n_kv, int64_t n_logit_rows) const {
    const auto& hp = text->hp;
    // Logits on the device and on the host, the attention mask (f16, n_kv x n), and a few
    // activations per layer that the allocator cannot overlap.
    const double logits = 2.0 * double(n_logit_rows) * hp.n_vocab * sizeof(float);
    const double mask = double(n_kv) * double(n_tokens) * 2.0;
    const double acts = double(n_tokens) * (6.0 * hp.n_embd + 3.0 * hp.n_ff + 2.0 * hp.n_head * double(hp.head_dim)) * sizeof(float);
    return logits + mask + acts;
}

void Model::Impl::check_finite(const std::vector<float>& out, const std::string& file_path, const char* what) const {
    for (float x : out) {
        if (!std::isfinite(x)) {
            throw ModelError(file_path + ": the " + what + " produced non-finite values (NaN or inf): the file holds "
                             "weights that are not finite or overflow");
        }
    }
}

const Model::Impl::VisionGraph& Model::Impl::encode(PixelKind kind, const void* pixels, int n, int h, int w) {
    const VisionModel& v = require_vision();
    v.check_input(n, h, w);
    const size_t n_values = static_cast<size_t>(n) * 3 * h * w;
    if (kind == PixelKind::Bytes && n_values > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
        // ggml indexes the rows of a gather with int.
        throw InputError(std::to_string(n) + " frames of " + std::to_string(h) + " x " + std::to_string(w) +
                         " are more than 2^31 pixel values for one call; use smaller batches");
    }
    Backend& device = encoder_backend();
    std::lock_guard<std::mutex> lock(device.compute_mutex());
    VisionGraph& vg = vision_graph;
    if (vg.kind != kind || vg.n != n || vg.h != h || vg.w != w) {
        // The encoder graph depends only on the input kind and the batch shape: built once per
        // shape, its allocation kept on the vision scheduler.
        vg = VisionGraph();
        vg.g = std::make_unique<GraphBuilder>(kMaxNodes, backend.is_cpu());
        GraphBuilder& g = *vg.g;
        ggml_tensor* px = nullptr;
        if (kind == PixelKind::Bytes) {
            vg.input = g.input_late(GGML_TYPE_I32, {static_cast<int64_t>(n_values)}, "pixel_bytes");
            px = v.normalize(g, vg.input, n, h, w);
        } else {
            vg.input = g.input_late(GGML_TYPE_F32, {w, h, 3, n}, "pixels");
            px = vg.input;
        }
        vg.out = v.build(g, px, n, h, w);
        ggml_set_output(vg.out);
        g.expand(vg.out);
        if (kind == PixelKind::Bytes) {
            // x - x is 0 for every finite x and NaN for NaN or inf: one scalar tells.
            vg.finite = ggml_sum(g.ctx(), ggml_sub(g.ctx(), vg.out, vg.out));
            ggml_set_output(vg.finite);
            g.expand(vg.finite);
        }
        allocate_graph(vision_sched, g, "encoding " + std::to_string(n) + " frames at once", "use smaller batches");
        vg.kind = kind;
        vg.n = n;
        vg.h = h;
        vg.w = w;
    }
    if (kind == PixelKind::Bytes) {
        // Bytes (frame, row, column, channel) -> byte ids (frame, channel, row, column), written
        // straight into the input when the device's memory is the host's.
        const auto* bytes = static_cast<const uint8_t*>(pixels);
        const bool host = ggml_backend_buffer_is_host(vg.input->buffer);
        std::vector<int32_t> staging(host ? 0 : n_values);
        int32_t* ids = host ? static_cast<int32_t*>(vg.input->data) : staging.data();
        const size_t plane = static_cast<size_t>(h) * w;
        for (size_t f = 0; f < static_cast<size_t>(n); ++f) {
            const uint8_t* src = bytes + f * plane * 3;
            int32_t* dst = ids + f * plane * 3;
            for (size_t p = 0; p < plane; ++p) {
                for (int c = 0; c < 3; ++c) dst[c * plane + p] = VisionModel::byte_id(c, src[3 * p + c]);
            }
        }
        if (!host) ggml_backend_tensor_set(vg.input, staging.data(), 0, n_values * sizeof(int32_t));
    } else {
        ggml_backend_tensor_set(vg.input, pixels, 0, n_values * sizeof(float));
    }
    compute_graph(vision_sched, *vg.g, device, "vision encoder computation");
    if (vg.finite) {
        float x = 0.0f;
        ggml_backend_tensor_get(vg.finite, &x, 0, sizeof(x));
        if (!std::isfinite(x)) check_finite({x}, mmproj_file->path(), "vision encoder");
    }
    return vg;
}

Model::Model(const std::string& text_gguf, const ModelOptions& options)
    : impl_(std::make_shared<Impl>(text_gguf, options)) {}

Model::~Model() = default;

bool Model::has_vision() const { return impl_->vision != nullptr; }
bool Model::encoder_overlaps() const { return impl_->vision_backend != nullptr; }
int Model::vision_tokens_per_patch(int height, int width) const { return impl_->require_vision().tokens_per_patch(height, width); }
int Model::vision_row_width() const {
    const VisionModel& v = impl_->require_vision();
    return v.n_embd_out * (1 + v.n_deepstack);
}
int Model::vision_frames_per_patch() const { return impl_->require_vision().frames_per_patch; }

VisionInfo Model::vision_info() const {
    const VisionModel& v = impl_->require_vision();
    VisionInfo i;
    i.projector = v.projector;
    i.image_size = v.image_size;
    i.patch_size = v.patch_size;
    i.size_multiple = v.size_multiple;
    i.frames_per_patch = v.frames_per_patch;
    i.n_deepstack = v.n_deepstack;
    i.row_width = vision_row_width();
    i.image_mean = v.image_mean;
    i.image_std = v.image_std;
    return i;
}

std::vector<float> Model::encode_frames(const float* pixels, int n, int h, int w) {
    Impl& m = *impl_;
    const VisionModel& v = m.require_vision();
    if (n <= 0) throw InputError("encode_frames needs at least one frame");
    v.check_input(n, h, w);
    const size_t n_pixels = static_cast<size_t>(n) * 3 * h * w;
    for (size_t i = 0; i < n_pixels; ++i) {
        if (!std::isfinite(pixels[i])) {
            throw InputError("pixel value " + std::to_string(pixels[i]) + " at index " + std::to_string(i) +
                             " is not finite (NaN or inf)");
        }
    }
    std::lock_guard<std::mutex> lock(m.vision_mutex);
    std::vector<float> out = read_f32(m.encode(Impl::PixelKind::Normalized, pixels, n, h, w).out);
    m.check_finite(out, m.mmproj_file->path(), "vision encoder");
    return out;
}

int Model::n_vocab() const { return impl_->text->hp.n_vocab; }
int Model::n_embd() const { return impl_->text->hp.n_embd; }

std::vector<float> Model::logits(const Tokens& input) {
    Impl& m = *impl_;
    m.validate(input, false, true);
    const int64_t n = static_cast<int64_t>(input.ids.size());
    m.check_memory(m.prefill_bytes(n, n, n), "a logits call of " + std::to_string(n) + " tokens");
    GraphBuilder g(Impl::kMaxNodes, m.backend.is_cpu());
    DecoderInputs in = m.make_inputs(g, input, 0, {});
    CausalSelfAttention attn(m.text->kv_shape().scale(), m.text->hp.sliding_window);
    std::vector<float> out = run_graph(m.sched, g, m.text->build(g, in, attn), m.backend);
    m.check_finite(out, m.path, "model");
    return out;
}

namespace {

constexpr int kPromptUbatch = 512;

}  // namespace

std::vector<int32_t> Model::generate(const Tokens& prompt, int max_tokens, const GenerateOptions& options,
                                     const TokenCallback& on_token) {
    Impl& m = *impl_;
    const auto& hp = m.text->hp;
    m.validate(prompt);
    if (max_tokens < 0) throw InputError("max_tokens must be >= 0");
    const int n_prompt = static_cast<int>(prompt.ids.size());
    const int64_t n_total64 = int64_t(n_prompt) + max_tokens;
    if (n_total64 > std::numeric_limits<int32_t>::max() || m.last_position(prompt, 0) + int64_t(max_tokens) >= std::numeric_limits<int32_t>::max()) {
        throw InputError("prompt + max_tokens (" + std::to_string(n_total64) + ") exceed 2^31 - 1 tokens");
    }
    const int n_total = static_cast<int>(n_total64);
    const ggml_type kv = parse_kv_type(options.kv_type);
    m.check_memory(double(n_total) * hp.n_layer * 2.0 * hp.n_head_kv * double(ggml_row_size(kv, hp.head_dim)) +
                       m.prefill_bytes(std::min(n_prompt, kPromptUbatch), n_total, 1),
                   "a KV cache of " + std::to_string(n_total) + " tokens (prompt + max_tokens)");
    const KVShape shape = m.text->kv_shape();
    KVCache cache(shape, m.backend, n_total, kv);
    // One decoder batch over the cache: tokens at slots [n_past, ...), logits of `rows`.
    auto batch = [&](const Tokens& part, int n_past, int pos0, const std::vector<int32_t>& rows) {
        GraphBuilder g(Impl::kMaxNodes, m.backend.is_cpu());
        DecoderInputs in = m.make_inputs(g, part, pos0, rows);
        KVCacheAttention attn(cache, shape.scale(), n_past);
        return run_graph(m.sched, g, m.text->build(g, in, attn), m.backend);
    };
    // Prefill in micro-batches; logits of the last prompt token only.
    std::vector<float> last;
    for (int b = 0; b < n_prompt; b += kPromptUbatch) {
        const int e = std::min(n_prompt, b + kPromptUbatch);
        last = batch(slice_tokens(prompt, b, e), b, b, {e == n_prompt ? e - b - 1 : 0});
    }
    m.check_finite(last, m.path, "model");
    Sampler greedy{SamplingOptions()};
    const int pos0 = m.last_position(prompt, 0) + 1;
    return decode(std::move(last), max_tokens, greedy, {}, stop_tokens(hp.eos_ids, options.stop, options.ignore_eos),
                  on_token, [&](int32_t tok, int i) {
                      Tokens next;
                      next.ids = {tok};
                      std::vector<float> logits = batch(next, n_prompt + i, pos0 + i, {});
                      m.check_finite(logits, m.path, "model");
                      return logits;
                  });
}

PromptBenchResult Model::bench_prompt(int n_prompt, int n_depth, int repetitions, const std::string& kv_type, int n_ubatch) {
    Impl& m = *impl_;
    const auto& hp = m.text->hp;
    if (n_prompt <= 0 || n_depth < 0 || repetitions <= 0 || n_ubatch <= 0) {
        throw InputError("bench_prompt needs n_prompt > 0, n_depth >= 0, repetitions > 0, n_ubatch > 0");
    }
    const KVShape shape = m.text->kv_shape();
    KVCache cache(shape, m.backend, n_depth + n_prompt, parse_kv_type(kv_type));
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> dist(0, hp.n_vocab - 1);
    auto run = [&](int b, int n) {
        for (int u = 0; u < n; u += n_ubatch) {
            Tokens part;
            const int len = std::min(n_ubatch, n - u);
            for (int i = 0; i < len; ++i) part.ids.push_back(dist(rng));
            GraphBuilder g(Impl::kMaxNodes, m.backend.is_cpu());
            DecoderInputs in = m.make_inputs(g, part, b + u, {len - 1});
            KVCacheAttention attn(cache, shape.scale(), b + u);
            run_graph(m.sched, g, m.text->build(g, in, attn), m.backend);
        }
    };
    PromptBenchResult r;
    r.n_prompt = n_prompt;
    r.n_depth = n_depth;
    run(0, n_depth);
    run(n_depth, n_prompt);  // warm-up, as llama-bench does
    for (int i = 0; i < repetitions; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        run(n_depth, n_prompt);
        r.seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return r;
}

std::map<std::string, std::string> Model::info() const {
    const auto& hp = impl_->text->hp;
    std::map<std::string, std::string> out{
        {"path", impl_->path},
        {"architecture", hp.arch},
        {"n_vocab", std::to_string(hp.n_vocab)},
        {"n_embd", std::to_string(hp.n_embd)},
        {"n_layer", std::to_string(hp.n_layer)},
        {"n_head", std::to_string(hp.n_head)},
        {"n_head_kv", std::to_string(hp.n_head_kv)},
        {"head_dim", std::to_string(hp.head_dim)},
        {"n_ff", std::to_string(hp.n_ff)},
        {"n_ctx_train", std::to_string(hp.n_ctx_train)},
        {"rope_freq_base", std::to_string(hp.rope.freq_base)},
        {"n_deepstack", std::to_string(hp.n_deepstack)},
        {"n_position_axes", std::to_string(hp.n_position_axes)},
        {"tied_output", hp.tied_output ? "true" : "false"},
        {"eos_ids", [&] {
             std::string ids;
             for (int32_t id : hp.eos_ids) ids += (ids.empty() ? "" : ",") + std::to_string(id);
             return ids;
         }()},
        {"device", impl_->backend.device_name()},
        {"threads", std::to_string(impl_->backend.threads())},
        {"threads_note", impl_->threads_note},
        {"weights_bytes", std::to_string(impl_->weights.bytes())},
    };
    if (const VisionModel* v = impl_->vision.get()) {
        out["mmproj"] = impl_->mmproj_file->path();
        out["vision.projector"] = v->projector;
        out["vision.patch_size"] = std::to_string(v->patch_size);
        out["vision.image_size"] = std::to_string(v->image_size);
        out["vision.frames_per_patch"] = std::to_string(v->frames_per_patch);
        out["vision.n_deepstack"] = std::to_string(v->n_deepstack);
        out["vision.weights_bytes"] = std::to_string(impl_->mmproj_weights->bytes());
        auto join = [](const std::vector<float>& xs) {
            std::string s;
            for (float x : xs) s += (s.empty() ? "" : ",") + std::to_string(x);
            return s;
        };
        out["vision.image_mean"] = join(v->image_mean);
        out["vision.image_std"] = join(v->image_std);
    }
    std::string types;
    for (const auto& [t, c] : impl_->weights.type_counts()) types += (types.empty() ? "" : ",") + t + ":" + std::to_string(c);
    out["tensor_types"] = types;
    return out;
}

}  // namespace statekv
