#include "weights.h"

#include <fstream>
#include <sstream>

#include "gguf.h"

namespace statekv {

namespace {

std::string shape_str(const int64_t* ne, int n) {
    std::ostringstream s;
    s << "[";
    for (int i = 0; i < n; ++i) {
        s << (i ? ", " : "");
        if (ne[i] < 0) s << "?"; else s << ne[i];
    }
    s << "]";
    return s.str();
}

}  // namespace

WeightStore::WeightStore(const GgufFile& file, const Backend& backend) : file_(file), backend_(backend) {}

WeightStore::~WeightStore() {
    for (auto b : buffers_) ggml_backend_buffer_free(b);
    for (auto& [buft, c] : ctxs_) ggml_free(c);
}

bool WeightStore::has(const std::string& name) const { return file_.tensor_meta(name) != nullptr; }

ggml_tensor* WeightStore::optional(const std::string& name, const std::vector<int64_t>& shape, bool matmul) {
    return has(name) ? require(name, shape, matmul) : nullptr;
}

ggml_tensor* WeightStore::require(const std::string& name, const std::vector<int64_t>& shape, bool matmul) {
    const ggml_tensor* meta = file_.tensor_meta(name);
    if (!meta) file_.fail("missing tensor '" + name + "' (expected shape " + shape_str(shape.data(), (int)shape.size()) + ")");
    bool same = true;
    for (int i = 0; i < GGML_MAX_DIMS; ++i) {
        const int64_t want = i < (int)shape.size() ? shape[i] : 1;
        if (want >= 0 && meta->ne[i] != want) same = false;  // -1: any size
    }
    if (!same) {
        file_.fail("tensor '" + name + "' has shape " + shape_str(meta->ne, ggml_n_dims(meta)) +
                   ", expected " + shape_str(shape.data(), (int)shape.size()));
    }
    for (const auto& e : entries_) {
        if (name == ggml_get_name(e.tensor)) return e.tensor;
    }
    ggml_backend_buffer_type_t buft = backend_.weight_buffer_type(const_cast<ggml_tensor*>(meta), matmul);
    ggml_context*& ctx = ctxs_[buft];
    if (!ctx) {
        const size_t n = static_cast<size_t>(gguf_get_n_tensors(file_.ctx())) + 1;
        ggml_init_params ip{ggml_tensor_overhead() * n, nullptr, true};
        ctx = ggml_init(ip);
    }
    ggml_tensor* t = ggml_dup_tensor(ctx, meta);
    ggml_set_name(t, name.c_str());
    const int64_t id = gguf_find_tensor(file_.ctx(), name.c_str());
    entries_.push_back({t, gguf_get_tensor_offset(file_.ctx(), id)});
    return t;
}

void WeightStore::load() {
    for (auto& [buft, ctx] : ctxs_) {
        ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, buft);
        if (!buf) file_.fail(std::string("out of memory allocating the weights in ") + ggml_backend_buft_name(buft));
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
        buffers_.push_back(buf);
    }
    std::ifstream f(file_.path(), std::ios::binary);
    if (!f) file_.fail("cannot reopen file to read tensor data");
    std::vector<char> staging;
    for (auto& e : entries_) {
        // Whole-tensor writes: repacking buffer types convert layouts on set.
        const size_t n = ggml_nbytes(e.tensor);
        staging.resize(n);
        f.seekg(static_cast<std::streamoff>(file_.data_offset() + e.offset));
        f.read(staging.data(), static_cast<std::streamsize>(n));
        if (!f) file_.fail(std::string("truncated file while reading tensor '") + ggml_get_name(e.tensor) + "'");
        ggml_backend_tensor_set(e.tensor, staging.data(), 0, n);
    }
}

size_t WeightStore::bytes() const {
    size_t total = 0;
    for (auto b : buffers_) total += ggml_backend_buffer_get_size(b);
    return total;
}

std::map<std::string, int> WeightStore::type_counts() const {
    std::map<std::string, int> out;
    for (const auto& e : entries_) out[ggml_type_name(e.tensor->type)]++;
    return out;
}

}  // namespace statekv
