// A StateKV session: the prefix, frame steps against the cache policy, and questions over the
// detailed cache. The session holds positions and bookkeeping; what a step attends to is the
// policy's business (full, window, statekv), and the session never asks which one it has.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <mutex>
#include <numeric>
#include <set>

#include "generate.h"
#include "graph/run.h"
#include "io/session_file.h"
#include "memory/cache_policy.h"
#include "memory/detailed_cache.h"
#include "memory/kv_cache.h"
#include "model_impl.h"
#include "gguf.h"

namespace statekv {

namespace {

constexpr float kMaxRopeScale = 1e6f;

}  // namespace

namespace {

// First of the keys a sliding-window layer (window w) still needs when `next` tokens are in D.
int64_t window_start(int64_t next, int w) { return std::max<int64_t>(0, next - (w - 1)); }

// Writes each layer's keys/values to D, then lets the policy attend. A sliding-window layer sees
// only the last w tokens in the model itself, so in every mode its carried state is that window,
// read from D (nothing to score or select): the policies decide for the other layers only.
class StepAttention final : public LayerAttention {
public:
    StepAttention(DetailedCache& d, CachePolicy& policy, const KVShape& shape, const Batch& b)
        : d_(d), policy_(policy), shape_(shape), b_(b) {}
    ggml_tensor* attend(GraphBuilder& g, int layer, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v) override {
        d_.write(g, layer, k, v);
        if (const int w = shape_.window(layer); w > 0) {
            return segmented_attention(g, q, d_.view(g, layer, window_start(b_.n_past, w), b_.n_past + b_.n), b_.n_past,
                                       shape_.scale(), w);
        }
        return policy_.attend(g, layer, b_, q, k, v);
    }

private:
    DetailedCache& d_;
    CachePolicy& policy_;
    const KVShape& shape_;
    const Batch& b_;
};

}  // namespace

struct Session::Impl {
    Impl(std::shared_ptr<Model::Impl> m, const SessionOptions& o)
        : model(std::move(m)), options(o), shape(model->text->kv_shape()) {
        const auto& hp = model->text->hp;
        check_cache_policy_options(o);
        if (o.expected_length < 0) throw InputError("expected_length must be >= 0");
        if (o.rope_scale != 0.0f && !(o.rope_scale >= 1.0f && o.rope_scale <= kMaxRopeScale)) {
            throw InputError("rope_scale must be in [1, " + std::to_string(int(kMaxRopeScale)) + "] (or 0 for none), got " +
                             std::to_string(o.rope_scale));
        }
        if (o.expected_length > 0 && o.rope_scale > 0.0f) throw InputError("give either expected_length or rope_scale, not both");
        if (o.detailed_chunk < 0) throw InputError("detailed_chunk must be >= 0");
        rope = hp.rope;
        n_ctx = hp.n_ctx_train;
        // Dynamic NTK (as the StateKV authors scale for long videos): a larger rotary base so
        // that the expected length maps into the trained range. d / (d - 2) with d = rotary dims.
        const double dims = rope.n_dims;
        if (o.expected_length > hp.n_ctx_train) {
            const double f = hp.rope_scaling_factor;
            rope.freq_base = static_cast<float>(rope.freq_base *
                std::pow(f * o.expected_length / hp.n_ctx_train - (f - 1.0), dims / (dims - 2.0)));
            n_ctx = o.expected_length;
        } else if (o.rope_scale > 1.0f) {
            rope.freq_base = static_cast<float>(rope.freq_base * std::pow(double(o.rope_scale), dims / (dims - 2.0)));
            n_ctx = static_cast<int64_t>(std::llround(double(hp.n_ctx_train) * o.rope_scale));
        } else if (o.expected_length > 0) {
            n_ctx = std::max<int64_t>(n_ctx, o.expected_length);
        }
        if (rope.freq_base != hp.rope.freq_base && (dims <= 2.0 || !std::isfinite(rope.freq_base))) {
            throw InputError("NTK scaling for this length gives a rotary base that is not finite (rope.dimension_count " +
                             std::to_string(rope.n_dims) + ", base " + std::to_string(hp.rope.freq_base) + ")");
        }
        // Positions are int32 on the device.
        n_ctx = std::min<int64_t>(n_ctx, std::numeric_limits<int32_t>::max());
        // One chunk for the whole video when its length is known (questions then attend to one
        // segment); otherwise 16384 tokens, so a short stream does not reserve gigabytes.
        const int chunk = o.detailed_chunk > 0 ? o.detailed_chunk
                          : o.expected_length > 0 ? std::max(4096, o.expected_length)
                                                  : 16384;
        d = std::make_unique<DetailedCache>(shape, model->backend, parse_kv_type(o.kv_type), chunk);
        // The first chunk is allocated with the first batch: its size comes from the options
        // (expected_length), so check it now, before a long video is decoded for nothing.
        model->check_memory(double(chunk) * d->bytes_per_token(),
                            "a detailed cache chunk of " + std::to_string(chunk) + " tokens (expected_length / detailed_chunk)");
        policy = make_cache_policy(o, shape, model->backend, *d);
        sched = model->backend.new_scheduler(Model::Impl::kMaxNodes);
    }
    ~Impl() {
        if (sched) ggml_backend_sched_free(sched);
    }

    // Positions must continue after `next` (the session's next position), and the first
    // (temporal) axis never goes back within a batch: the cache is causal in entry order.
    static void check_positions(const Tokens& t, int next) {
        if (t.positions.empty()) return;
        const int n = static_cast<int>(t.ids.size());
        const int32_t first = *std::min_element(t.positions.begin(), t.positions.begin() + n);
        if (first < next) {
            throw InputError("positions must continue after the last position " + std::to_string(next - 1) +
                             " of the session, got " + std::to_string(first));
        }
        for (int i = 1; i < n; ++i) {
            if (t.positions[i] < t.positions[i - 1]) {
                throw InputError("positions decrease inside the batch (" + std::to_string(t.positions[i - 1]) + " then " +
                                 std::to_string(t.positions[i]) + " at index " + std::to_string(i) + ")");
            }
        }
    }

    void check_context(int64_t last_pos) const {
        if (last_pos >= n_ctx) {
            throw InputError("positions up to " + std::to_string(last_pos) + " do not fit the context of " +
                             std::to_string(n_ctx) + " tokens (" + model->text->hp.arch + " trained context of " +
                             model->path + "; pass expected_length or rope_scale for longer videos)");
        }
    }

    // Checks a prefix or step batch entering after n_past tokens at position `next`; returns the
    // position after it.
    int check_batch(const Tokens& t, bool is_step, int64_t n_past, int next, bool rows_on_device) const {
        model->validate(t, rows_on_device, true);
        check_positions(t, next);
        const int last = model->last_position(t, next);
        check_context(last);
        const int64_t n = static_cast<int64_t>(t.ids.size());
        model->check_memory(model->prefill_bytes(n, n_past + n, 0) + double(n) * d->bytes_per_token(),
                            std::string(is_step ? "a step" : "a prefix") + " of " + std::to_string(n) + " tokens");
        return last + 1;
    }

    // One prefix or step batch through the policy; device_rows: its visual rows on the device.
    void run_batch(const Tokens& t, bool is_step, const DeviceRows* device_rows = nullptr) {
        const int after = check_batch(t, is_step, d->size(), next_pos, device_rows != nullptr);
        Batch b;
        b.is_step = is_step;
        b.n_past = d->size();
        b.n = static_cast<int64_t>(t.ids.size());
        d->reserve(static_cast<int>(b.n));
        d->begin_graph();
        GraphBuilder g(Model::Impl::kMaxNodes, model->backend.is_cpu());
        DecoderInputs in = model->make_inputs(g, t, next_pos, {}, device_rows);
        in.no_logits = true;
        in.rope = &rope;
        policy->begin(g, b);
        StepAttention attn(*d, *policy, shape, b);
        model->text->build(g, in, attn);
        run_graph(sched, g, nullptr, model->backend);
        d->commit(static_cast<int>(b.n));
        policy->commit(b);
        next_pos = after;
        if (is_step) ++n_steps;
    }

    // Where a question's tokens and its answer's keep their keys and values: right after D's
    // tokens in D's own last chunk when it has room (DetailedCache::tail_space), so D and the
    // tail are one range for attention; otherwise a cache of their own (f32 when D is, else
    // f16). Either way D's tokens are never touched.
    struct QuestionTail {
        std::unique_ptr<KVCache> own;  // when D has no room
        DetailedCache::TailSpace at;   // where the question's first token goes
    };
    QuestionTail new_tail(int capacity) const {
        QuestionTail t;
        // In D only when the tail would have had D's own type anyway (a q8_0 D keeps f16 tails).
        if (d->type() == GGML_TYPE_F32 || d->type() == GGML_TYPE_F16) t.at = d->tail_space(capacity);
        if (!t.at.store) {
            t.own = std::make_unique<KVCache>(shape, model->backend, capacity,
                                              d->type() == GGML_TYPE_F32 ? GGML_TYPE_F32 : GGML_TYPE_F16);
            t.at = {t.own.get(), 0, d->size()};
        }
        return t;
    }

    // Logits of the given rows of a question batch over D + tail (the batch's tokens from tail
    // token n_tail_past).
    std::vector<float> question_batch(const Tokens& t, const QuestionTail& tail, int n_tail_past, int pos0,
                                      const std::vector<int32_t>& rows) {
        d->begin_graph();
        GraphBuilder g(Model::Impl::kMaxNodes, model->backend.is_cpu());
        DecoderInputs in = model->make_inputs(g, t, pos0, rows);
        in.rope = &rope;
        // Question and answer tokens attend over all of D plus themselves; D's tokens before the
        // tail's store come as views of D.
        const DetailedCache::TailSpace& at = tail.at;
        KVCacheAttention attn(*at.store, shape.scale(), static_cast<int>(at.first_slot) + n_tail_past, at.store_begin,
                              [this, &at](GraphBuilder& gb, int layer) {
                                  const int w = shape.window(layer);
                                  return d->view(gb, layer, w > 0 ? window_start(d->size(), w) : 0, at.store_begin);
                              });
        std::vector<float> out = run_graph(sched, g, model->text->build(g, in, attn), model->backend);
        model->check_finite(out, source.empty() ? model->path : model->path + " with the session loaded from " + source,
                            "model");
        return out;
    }

    // Serializes the calls on one session (its caches, positions and scheduler); calls on
    // different sessions run concurrently up to the model's compute lock.
    mutable std::mutex mutex;

    std::shared_ptr<Model::Impl> model;
    SessionOptions options;
    KVShape shape;
    RopeSpec rope;
    int64_t n_ctx = 0;
    std::unique_ptr<DetailedCache> d;
    std::unique_ptr<CachePolicy> policy;
    ggml_backend_sched_t sched = nullptr;
    int n_steps = 0;
    int next_pos = 0;
    std::string app_data;  // stored verbatim in session files for front ends
    std::string source;    // the session file this session was loaded from (for error messages)
    std::vector<double> step_seconds;
};

std::unique_ptr<Session> Model::session(const SessionOptions& options) {
    return std::unique_ptr<Session>(new Session(std::make_unique<Session::Impl>(impl_, options)));
}

Session::Session(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Session::~Session() = default;

void Session::prefill(const Tokens& tokens) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->n_steps > 0) throw InputError("prefill is for the prefix, before the first step; add_step continues the video");
    impl_->run_batch(tokens, false);
}

void Session::add_step(const Tokens& tokens) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    const auto t0 = std::chrono::steady_clock::now();
    impl_->run_batch(tokens, true);
    impl_->step_seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

void Session::add_frames(const uint8_t* pixels, int n_frames, int height, int width, const std::vector<Tokens>& steps) {
    Impl& s = *impl_;
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto t0 = std::chrono::steady_clock::now();
    Model::Impl& m = *s.model;
    const VisionModel& v = m.require_vision();
    if (!pixels) throw InputError("add_frames: no pixel data");
    if (n_frames <= 0) throw InputError("add_frames needs at least one frame");
    v.check_input(n_frames, height, width);
    const int n_patches = n_frames / v.frames_per_patch;
    const int per_patch = v.tokens_per_patch(height, width);
    if (static_cast<int>(steps.size()) != n_patches) {
        throw InputError("add_frames: " + std::to_string(n_frames) + " frames make " + std::to_string(n_patches) +
                         " step(s) of " + std::to_string(v.frames_per_patch) + " frame(s), but " +
                         std::to_string(steps.size()) + " step layouts were given");
    }
    // Every step before anything runs: a bad one leaves the session as it was.
    int64_t n_past = s.d->size();
    int next = s.next_pos;
    for (size_t k = 0; k < steps.size(); ++k) {
        if (static_cast<int>(steps[k].embedding_rows.size()) != per_patch) {
            throw InputError("add_frames: step " + std::to_string(k) + " places " + std::to_string(steps[k].embedding_rows.size()) +
                             " visual rows, but frames of " + std::to_string(height) + " x " + std::to_string(width) +
                             " give " + std::to_string(per_patch) + " rows per step");
        }
        try {
            next = s.check_batch(steps[k], true, n_past, next, /*rows_on_device*/ true);
        } catch (const InputError& e) {
            throw InputError("add_frames: step " + std::to_string(k) + ": " + e.what());
        }
        n_past += static_cast<int64_t>(steps[k].ids.size());
    }
    // The encoder's output stays where it is computed; each step reads its rows in place, so the
    // vision lock is held until the last step is committed.
    std::lock_guard<std::mutex> vision_lock(m.vision_mutex);
    ggml_tensor* rows = m.encode(Model::Impl::PixelKind::Bytes, pixels, n_frames, height, width).out;
    const double encode_share =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / static_cast<double>(n_patches);
    for (size_t k = 0; k < steps.size(); ++k) {
        const auto t1 = std::chrono::steady_clock::now();
        const DeviceRows step_rows{rows, static_cast<int64_t>(k) * per_patch};
        s.run_batch(steps[k], true, &step_rows);
        s.step_seconds.push_back(encode_share + std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
    }
}

namespace {

constexpr int kQuestionUbatch = 512;

}  // namespace

std::vector<float> Session::question_logits(const Tokens& question, int last_rows) {
    Impl& s = *impl_;
    std::lock_guard<std::mutex> lock(s.mutex);
    s.model->validate(question);
    s.check_positions(question, s.next_pos);
    s.check_context(s.model->last_position(question, s.next_pos));
    const int n = static_cast<int>(question.ids.size());
    const int n_vocab = s.model->text->hp.n_vocab;
    if (last_rows < 0 || last_rows > n) {
        throw InputError("last_rows must be in [0, " + std::to_string(n) + "] (0: every row), got " +
                         std::to_string(last_rows));
    }
    const int first_row = last_rows == 0 ? 0 : n - last_rows;
    if (!question.embedding_rows.empty() && n > kQuestionUbatch) throw InputError("question embeddings are limited to 512 tokens");
    s.model->check_memory(s.model->prefill_bytes(std::min(n, kQuestionUbatch), s.d->size() + n, n),
                          "question logits of " + std::to_string(n) + " tokens");
    const Impl::QuestionTail tail = s.new_tail(n);
    std::vector<float> out;
    out.reserve(static_cast<size_t>(n - first_row) * n_vocab);
    for (int b = 0; b < n; b += kQuestionUbatch) {
        const int e = std::min(n, b + kQuestionUbatch);
        // Only the rows asked for go through the output head (most of a small model's work per
        // token: Gemma 3 270M's 262k-entry vocabulary). A batch before them still fills the tail;
        // its one computed row is dropped.
        const bool wanted = e > first_row;
        std::vector<int32_t> rows;  // empty: every row
        if (first_row > 0 && !wanted) rows = {e - b - 1};
        for (int i = std::max(b, first_row); first_row > 0 && i < e; ++i) rows.push_back(i - b);
        std::vector<float> l = s.question_batch(slice_tokens(question, b, e), tail, b, s.next_pos + b, rows);
        if (wanted) out.insert(out.end(), l.begin(), l.end());
    }
    return out;
}

std::vector<int32_t> Session::generate(const Tokens& question, int max_tokens, const SamplingOptions& options,
                                       const TokenCallback& on_token) {
    Impl& s = *impl_;
    std::lock_guard<std::mutex> lock(s.mutex);
    const auto& hp = s.model->text->hp;
    s.model->validate(question);
    s.check_positions(question, s.next_pos);
    validate_sampling(options);
    if (max_tokens < 0) throw InputError("max_tokens must be >= 0");
    const int n = static_cast<int>(question.ids.size());
    if (n > kQuestionUbatch) throw InputError("questions are limited to 512 tokens per call");
    const int last_q = s.model->last_position(question, s.next_pos);
    s.check_context(last_q + max_tokens);
    const Impl::QuestionTail tail = s.new_tail(n + std::max(1, max_tokens));
    Sampler sampler(options);
    std::vector<float> logits = s.question_batch(question, tail, 0, s.next_pos, {n - 1});
    return decode(std::move(logits), max_tokens, sampler, question.ids,
                  stop_tokens(hp.eos_ids, options.stop, options.ignore_eos), on_token, [&](int32_t tok, int i) {
                      Tokens next;
                      next.ids = {tok};
                      return s.question_batch(next, tail, n + i, last_q + 1 + i, {});
                  });
}

std::vector<int32_t> Session::carried(int layer, int* n_kept) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    const int n_layer = impl_->model->text->hp.n_layer;
    if (layer < 0 || layer >= n_layer) {
        throw InputError("layer " + std::to_string(layer) + " is out of range [0, " + std::to_string(n_layer) + ")");
    }
    if (const int w = impl_->shape.window(layer); w > 0) {
        // A sliding-window layer carries the last w - 1 tokens, the same for every KV head.
        const int64_t n = impl_->d->size(), first = window_start(n, w);
        std::vector<int32_t> ids;
        for (int h = 0; h < impl_->shape.n_head_kv; ++h) {
            for (int64_t i = first; i < n; ++i) ids.push_back(static_cast<int32_t>(i));
        }
        *n_kept = static_cast<int>(n - first);
        return ids;
    }
    return impl_->policy->carried(layer, n_kept);
}

std::unique_ptr<Session> Session::fork() const {
    const Impl& s = *impl_;
    std::lock_guard<std::mutex> lock(s.mutex);
    auto copy = std::make_unique<Impl>(s.model, s.options);
    copy->d = s.d->fork();
    copy->policy = s.policy->fork(*copy->d);
    copy->n_steps = s.n_steps;
    copy->next_pos = s.next_pos;
    copy->app_data = s.app_data;
    copy->source = s.source;
    copy->step_seconds = s.step_seconds;
    return std::unique_ptr<Session>(new Session(std::move(copy)));
}

namespace {

constexpr const char* kSessionArch = "statekv.session";
// 2: a payload checksum (statekv.payload.checksum). 3: the selection rule's variants
// (statekv.options.score_decay, statekv.options.pin_prefix, and what they carry: c.scores.<layer>,
// statekv.carried.n_pinned); a version 2 file is a session of the paper's rule and loads as one.
constexpr int64_t kSessionVersion = 3;
constexpr int64_t kOldestSessionVersion = 2;

}  // namespace

void Session::save(const std::string& path, const std::string& app_data) const {
    const Impl& s = *impl_;
    std::lock_guard<std::mutex> lock(s.mutex);
    StateWriter w;
    gguf_context* kv = w.kv();
    gguf_set_val_str(kv, "general.architecture", kSessionArch);
    gguf_set_val_u32(kv, "statekv.session.version", kSessionVersion);
    gguf_set_val_str(kv, "statekv.model.fingerprint", s.model->fingerprint().c_str());
    gguf_set_val_str(kv, "statekv.model.path", s.model->path.c_str());
    gguf_set_val_str(kv, "statekv.options.mode", s.options.mode.c_str());
    gguf_set_val_i64(kv, "statekv.options.budget", s.options.budget);
    gguf_set_val_i64(kv, "statekv.options.window", s.options.window);
    gguf_set_val_str(kv, "statekv.options.kv_type", s.options.kv_type.c_str());
    gguf_set_val_i64(kv, "statekv.options.expected_length", s.options.expected_length);
    gguf_set_val_f32(kv, "statekv.options.rope_scale", s.options.rope_scale);
    gguf_set_val_i64(kv, "statekv.options.detailed_chunk", s.options.detailed_chunk);
    gguf_set_val_f32(kv, "statekv.options.score_decay", s.options.score_decay);
    gguf_set_val_bool(kv, "statekv.options.pin_prefix", s.options.pin_prefix);
    gguf_set_val_i64(kv, "statekv.n_tokens", s.d->size());
    gguf_set_val_i64(kv, "statekv.n_steps", s.n_steps);
    gguf_set_val_i64(kv, "statekv.next_position", s.next_pos);
    gguf_set_val_str(kv, "statekv.app_data", app_data.c_str());
    s.d->save(w);
    s.policy->save(w);
    w.write(path);
}

std::unique_ptr<Session> Model::load_session(const std::string& path) {
    StateReader r(path);
    const GgufFile& f = r.file();
    if (!f.has("general.architecture") || f.get_str("general.architecture") != kSessionArch) {
        f.fail("not a statekv session file (general.architecture is not '" + std::string(kSessionArch) + "')");
    }
    const int64_t version = f.get_int("statekv.session.version", 0, std::numeric_limits<uint32_t>::max());
    if (version < kOldestSessionVersion || version > kSessionVersion) {
        f.fail("statekv.session.version " + std::to_string(version) + " is not supported (expected " +
               std::to_string(kOldestSessionVersion) + " to " + std::to_string(kSessionVersion) +
               (version < kOldestSessionVersion ? "; files of earlier versions carry no payload checksum: save the "
                                                  "session again" : "; saved by a newer statekv") + ")");
    }
    const std::string saved = f.get_str("statekv.model.fingerprint");
    const std::string mine = impl_->fingerprint();
    if (saved != mine) {
        f.fail("saved from another model (" + saved + ") than " + impl_->path + " (" + mine + ")");
    }
    r.verify_checksum();
    constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();
    SessionOptions o;
    o.mode = f.get_str("statekv.options.mode");
    o.budget = static_cast<int>(f.get_int("statekv.options.budget", 0, kMaxInt));
    o.window = static_cast<int>(f.get_int("statekv.options.window", 0, kMaxInt));
    o.kv_type = f.get_str("statekv.options.kv_type");
    o.expected_length = static_cast<int>(f.get_int("statekv.options.expected_length", 0, kMaxInt));
    o.rope_scale = f.get_f32("statekv.options.rope_scale");
    o.detailed_chunk = static_cast<int>(f.get_int("statekv.options.detailed_chunk", 0, kMaxInt));
    if (version >= 3) {
        o.score_decay = f.get_f32("statekv.options.score_decay");
        o.pin_prefix = f.get_bool("statekv.options.pin_prefix");
    }
    std::unique_ptr<Session::Impl> s;
    try {
        s = std::make_unique<Session::Impl>(impl_, o);
    } catch (const InputError& e) {
        f.fail(std::string("the saved session options are not valid: ") + e.what());
    }
    // Header fields against each other and against the payload: the chunk layout holds exactly
    // the tokens the header counts, steps and kept entries within them, positions in context.
    const int64_t n_tokens = f.get_int("statekv.n_tokens", 0, kMaxInt);
    s->d->load(r);
    if (s->d->size() != n_tokens) {
        f.fail("statekv.n_tokens = " + std::to_string(n_tokens) + " but statekv.detailed.chunks holds " +
               std::to_string(s->d->size()) + " tokens");
    }
    s->n_steps = static_cast<int>(f.get_int("statekv.n_steps", 0, n_tokens));
    s->policy->load(r, s->n_steps);
    s->next_pos = static_cast<int>(f.get_int("statekv.next_position", 0, s->n_ctx));
    if (n_tokens > 0 && s->next_pos == 0) f.fail("statekv.next_position = 0 but the session holds " + std::to_string(n_tokens) + " tokens");
    if (f.has("statekv.app_data")) s->app_data = f.get_str("statekv.app_data");
    s->source = path;
    return std::unique_ptr<Session>(new Session(std::move(s)));
}

SessionStats Session::stats() const {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    SessionStats st;
    st.tokens_detailed = impl_->d->size();
    st.tokens_carried = impl_->policy->carried_tokens();
    st.steps = impl_->n_steps;
    st.bytes_detailed = impl_->d->bytes();
    st.bytes_carried = impl_->policy->carried_bytes();
    st.step_seconds = impl_->step_seconds;
    return st;
}

int64_t Session::n_tokens() const {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    return impl_->d->size();
}
int Session::next_position() const {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    return impl_->next_pos;
}
const std::string& Session::app_data() const { return impl_->app_data; }
const SessionOptions& Session::options() const { return impl_->options; }

}  // namespace statekv
