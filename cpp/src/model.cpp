#include <algorithm>
#include <cmath>
#include <mutex>
#include <cstdio>
#include <chrono>
#include <numeric>
#include <random>
#include <limits>
#include <set>
#include <thread>

#include "attention.h"
#include "cache/kv_cache.h"
#include "ggml-alloc.h"
#include "model_impl.h"

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
        // Which text decoders each projector was trained with (InternVL3 pairs with Qwen2.5,
        // InternVL3.5 with Qwen3; Qwen3-VL's merger with its own decoder).
        static const std::map<std::string, std::vector<std::string>> pairs = {
            {"internvl", {"qwen2", "qwen3"}},
            {"qwen3vl_merger", {"qwen3vl"}},
        };
        const auto it = pairs.find(vision->projector);
        if (it != pairs.end() && std::find(it->second.begin(), it->second.end(), text->hp.arch) == it->second.end()) {
            std::string archs;
            for (const auto& a : it->second) archs += (archs.empty() ? "" : " or ") + a;
            throw ModelError(options.mmproj + ": a '" + vision->projector + "' projector goes with a " + archs +
                             " text model, but " + p + " is " + text->hp.arch + ": these two files are not a pair");
        }
        if (vision->n_embd_out != text->hp.n_embd) {
            throw ModelError(options.mmproj + ": the projector's output width " + std::to_string(vision->n_embd_out) +
                             " does not match the embedding width " + std::to_string(text->hp.n_embd) + " of " + p +
                             " (" + text->hp.arch + "): these two files are not a pair");
        }
        if (vision->n_deepstack != text->hp.n_deepstack) {
            throw ModelError(options.mmproj + ": the projector gives " + std::to_string(vision->n_deepstack) +
                             " DeepStack feature slices but " + p + " expects " + std::to_string(text->hp.n_deepstack) +
                             ": these two files are not a pair");
        }
        mmproj_weights->load();
        vision_sched = backend.new_scheduler(kMaxNodes);
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

void Model::Impl::validate(const Tokens& in) const {
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
    const size_t k = in.embedding_rows.size();
    if (k == 0 && !in.embeddings.empty()) throw InputError("embeddings given without embedding_rows");
    if (k > 0) {
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
        std::set<int32_t> seen;
        for (int32_t r : in.embedding_rows) {
            if (r < 0 || static_cast<size_t>(r) >= n) {
                throw InputError("embedding row " + std::to_string(r) + " is out of range [0, " + std::to_string(n) + ")");
            }
            if (!seen.insert(r).second) throw InputError("embedding row " + std::to_string(r) + " appears twice");
        }
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
                                       const std::vector<int32_t>& output_rows) const {
    const auto& hp = text->hp;
    const int n = static_cast<int>(in.ids.size());
    DecoderInputs d;
    d.n_tokens = n;
    d.token_ids = g.input_i32(in.ids, "token_ids");
    std::vector<int32_t> pos(n);
    if (in.positions.empty()) {
        std::iota(pos.begin(), pos.end(), default_pos0);
    } else {
        std::copy(in.positions.begin(), in.positions.begin() + n, pos.begin());
    }
    if (hp.n_position_axes > 1) {
        // Four streams (t, h, w, extra). Rotary pairs outside the t/h/w sections rotate with
        // the temporal position, as transformers' Qwen3-VL does (llama.cpp feeds them 0).
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
        const int width = static_cast<int>(in.embeddings.size() / k);
        const int full = text->embedding_width();
        if (width == full) {
            d.embeddings = g.input_f32(in.embeddings, {full, k}, "embeddings");
        } else {
            // Main slice only: DeepStack slices are zero.
            std::vector<float> padded(static_cast<size_t>(full) * k, 0.0f);
            for (int r = 0; r < k; ++r) std::copy_n(&in.embeddings[size_t(r) * width], width, &padded[size_t(r) * full]);
            d.embeddings = g.input_f32(padded, {full, k}, "embeddings");
        }
        d.embedding_rows = g.input_i32(in.embedding_rows, "embedding_rows");
    }
    if (!output_rows.empty()) d.output_rows = g.input_i32(output_rows, "output_rows");
    return d;
}

std::vector<float> Model::Impl::compute(GraphBuilder& g, ggml_tensor* out) { return run_graph(sched, g, out, backend); }

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

std::vector<float> run_graph(ggml_backend_sched_t sched, GraphBuilder& g, ggml_tensor* out, const Backend& backend) {
    if (out) {
        ggml_set_output(out);
        g.expand(out);
    }
    std::lock_guard<std::mutex> lock(backend.compute_mutex());
    ggml_backend_sched_reset(sched);
    // A fresh allocation plan for every graph: ggml reuses the previous plan when the node count
    // matches and every node still fits, even if in-place decisions made for other shapes no
    // longer hold (seen with broadcast adds); planning costs microseconds.
    if (!ggml_backend_sched_reserve(sched, g.graph()) || !ggml_backend_sched_alloc_graph(sched, g.graph())) {
        throw InputError("not enough device memory for the compute graph (" + std::to_string(ggml_graph_n_nodes(g.graph())) +
                         " nodes); use fewer tokens per call");
    }
    g.upload_inputs();
    if (ggml_backend_sched_graph_compute(sched, g.graph()) != GGML_STATUS_SUCCESS) {
        throw ModelError("graph computation failed on device " + backend.device_name());
    }
    if (!out) return {};
    std::vector<float> host(ggml_nelements(out));
    ggml_backend_tensor_get(out, host.data(), 0, host.size() * sizeof(float));
    return host;
}

Model::Model(const std::string& text_gguf, const ModelOptions& options)
    : impl(std::make_shared<Impl>(text_gguf, options)) {}

Model::~Model() = default;

bool Model::has_vision() const { return impl->vision != nullptr; }
int Model::vision_tokens_per_patch(int height, int width) const { return impl->require_vision().tokens_per_patch(height, width); }
int Model::vision_row_width() const {
    const VisionModel& v = impl->require_vision();
    return v.n_embd_out * (1 + v.n_deepstack);
}
int Model::vision_frames_per_patch() const { return impl->require_vision().frames_per_patch; }

std::vector<float> Model::encode_frames(const float* pixels, int n, int h, int w) {
    Impl& m = *impl;
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
    // The cached encoder graph and the vision scheduler are shared by every caller.
    std::lock_guard<std::mutex> lock(m.backend.compute_mutex());
    auto& vg = m.vision_graph;
    const size_t n_values = static_cast<size_t>(n) * 3 * h * w;
    if (vg.n != n || vg.h != h || vg.w != w) {
        // The encoder graph depends only on the batch shape: build it once per shape.
        vg.g.reset();
        vg.n = -1;
        vg.g = std::make_unique<GraphBuilder>(Impl::kMaxNodes);
        vg.g->on_cpu = m.backend.is_cpu();
        std::vector<float> zeros(n_values, 0.0f);
        vg.pixels = vg.g->input_f32(zeros, {w, h, 3, n}, "pixels");
        vg.out = v.build(*vg.g, vg.pixels, n, h, w);
        ggml_set_output(vg.out);
        vg.g->expand(vg.out);
        ggml_backend_sched_reset(m.vision_sched);
        // A fresh plan for the new shape (see run_graph).
        if (!ggml_backend_sched_reserve(m.vision_sched, vg.g->graph()) ||
            !ggml_backend_sched_alloc_graph(m.vision_sched, vg.g->graph())) {
            throw InputError("not enough device memory to encode " + std::to_string(n) + " frames at once; use smaller batches");
        }
        vg.n = n;
        vg.h = h;
        vg.w = w;
    }
    vg.g->set_input(vg.pixels, pixels);
    vg.g->upload_inputs();
    if (ggml_backend_sched_graph_compute(m.vision_sched, vg.g->graph()) != GGML_STATUS_SUCCESS) {
        throw ModelError("vision encoder computation failed on device " + m.backend.device_name());
    }
    std::vector<float> out(ggml_nelements(vg.out));
    ggml_backend_tensor_get(vg.out, out.data(), 0, out.size() * sizeof(float));
    m.check_finite(out, m.mmproj_file->path(), "vision encoder");
    return out;
}

int Model::n_vocab() const { return impl->text->hp.n_vocab; }
int Model::n_embd() const { return impl->text->hp.n_embd; }

std::vector<float> Model::logits(const Tokens& input) {
    impl->validate(input);
    const int64_t n = static_cast<int64_t>(input.ids.size());
    impl->check_memory(impl->prefill_bytes(n, n, n), "a logits call of " + std::to_string(n) + " tokens");
    GraphBuilder g(Impl::kMaxNodes);
    DecoderInputs in = impl->make_inputs(g, input, 0, {});
    CausalSelfAttention attn(impl->text->hp);
    std::vector<float> out = impl->compute(g, impl->text->build(g, in, attn));
    impl->check_finite(out, impl->path, "model");
    return out;
}

namespace {

// Slice [b, e) of a batch (ids, positions on every axis, embeddings of the rows inside it).
Tokens slice_tokens(const Tokens& in, int b, int e) {
    Tokens out;
    const int n = static_cast<int>(in.ids.size());
    out.ids.assign(in.ids.begin() + b, in.ids.begin() + e);
    out.n_position_axes = in.n_position_axes;
    if (!in.positions.empty()) {
        for (int a = 0; a < in.n_position_axes; ++a) {
            out.positions.insert(out.positions.end(), in.positions.begin() + a * n + b, in.positions.begin() + a * n + e);
        }
    }
    if (!in.embedding_rows.empty()) {
        const size_t width = in.embeddings.size() / in.embedding_rows.size();
        for (size_t r = 0; r < in.embedding_rows.size(); ++r) {
            const int row = in.embedding_rows[r];
            if (row < b || row >= e) continue;
            out.embedding_rows.push_back(row - b);
            out.embeddings.insert(out.embeddings.end(), in.embeddings.begin() + r * width,
                                  in.embeddings.begin() + (r + 1) * width);
        }
    }
    return out;
}

int argmax(const float* v, int n) { return static_cast<int>(std::max_element(v, v + n) - v); }

}  // namespace

std::vector<int32_t> Model::generate(const Tokens& prompt, int max_tokens, const GenerateOptions& options,
                                     const TokenCallback& on_token) {
    Impl& m = *impl;
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
                       m.prefill_bytes(std::min(n_prompt, 512), n_total, 1),
                   "a KV cache of " + std::to_string(n_total) + " tokens (prompt + max_tokens)");
    KVCache cache(hp, m.backend, n_total, kv);
    std::set<int32_t> stop(options.stop.begin(), options.stop.end());
    if (!options.ignore_eos) stop.insert(hp.eos_ids.begin(), hp.eos_ids.end());

    // Prefill in micro-batches; logits of the last prompt token only.
    const int ubatch = 512;
    std::vector<float> last;
    for (int b = 0; b < n_prompt; b += ubatch) {
        const int e = std::min(n_prompt, b + ubatch);
        Tokens part = slice_tokens(prompt, b, e);
        GraphBuilder g(Impl::kMaxNodes);
        DecoderInputs in = m.make_inputs(g, part, b, e == n_prompt ? std::vector<int32_t>{e - b - 1} : std::vector<int32_t>{0});
        KVCacheAttention attn(hp, cache, b);
        last = m.compute(g, m.text->build(g, in, attn));
    }
    m.check_finite(last, m.path, "model");
    std::vector<int32_t> out;
    int pos = m.last_position(prompt, 0) + 1;
    for (int i = 0; i < max_tokens; ++i) {
        const int32_t tok = argmax(last.data(), hp.n_vocab);
        out.push_back(tok);
        if (on_token && !on_token(tok)) break;
        if (stop.count(tok) || i + 1 == max_tokens) break;
        Tokens next;
        next.ids = {tok};
        GraphBuilder g(Impl::kMaxNodes);
        DecoderInputs in = m.make_inputs(g, next, pos++, {});
        KVCacheAttention attn(hp, cache, n_prompt + i);
        last = m.compute(g, m.text->build(g, in, attn));
        m.check_finite(last, m.path, "model");
    }
    return out;
}

PromptBenchResult Model::bench_prompt(int n_prompt, int n_depth, int repetitions, const std::string& kv_type, int n_ubatch) {
    Impl& m = *impl;
    const auto& hp = m.text->hp;
    if (n_prompt <= 0 || n_depth < 0 || repetitions <= 0 || n_ubatch <= 0) {
        throw InputError("bench_prompt needs n_prompt > 0, n_depth >= 0, repetitions > 0, n_ubatch > 0");
    }
    KVCache cache(hp, m.backend, n_depth + n_prompt, parse_kv_type(kv_type));
    std::mt19937 rng(1234);
    std::uniform_int_distribution<int32_t> dist(0, hp.n_vocab - 1);
    auto run = [&](int b, int n) {
        for (int u = 0; u < n; u += n_ubatch) {
            Tokens part;
            const int len = std::min(n_ubatch, n - u);
            for (int i = 0; i < len; ++i) part.ids.push_back(dist(rng));
            GraphBuilder g(Impl::kMaxNodes);
            DecoderInputs in = m.make_inputs(g, part, b + u, {len - 1});
            KVCacheAttention attn(hp, cache, b + u);
            m.compute(g, m.text->build(g, in, attn));
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
    const auto& hp = impl->text->hp;
    std::map<std::string, std::string> out{
        {"path", impl->path},
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
        {"device", impl->backend.device_name()},
        {"threads", std::to_string(impl->backend.threads())},
        {"threads_note", impl->threads_note},
        {"weights_bytes", std::to_string(impl->weights.bytes())},
    };
    if (const VisionModel* v = impl->vision.get()) {
        out["mmproj"] = impl->mmproj_file->path();
        out["vision.projector"] = v->projector;
        out["vision.patch_size"] = std::to_string(v->patch_size);
        out["vision.image_size"] = std::to_string(v->image_size);
        out["vision.frames_per_patch"] = std::to_string(v->frames_per_patch);
        out["vision.n_deepstack"] = std::to_string(v->n_deepstack);
        out["vision.weights_bytes"] = std::to_string(impl->mmproj_weights->bytes());
        auto join = [](const std::vector<float>& xs) {
            std::string s;
            for (float x : xs) s += (s.empty() ? "" : ",") + std::to_string(x);
            return s;
        };
        out["vision.image_mean"] = join(v->image_mean);
        out["vision.image_std"] = join(v->image_std);
    }
    std::string types;
    for (const auto& [t, c] : impl->weights.type_counts()) types += (types.empty() ? "" : ",") + t + ":" + std::to_string(c);
    out["tensor_types"] = types;
    return out;
}

}  // namespace statekv
