#include <algorithm>
#include "io/weights.h"

#include <cmath>
#include <cstring>
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

bool is_float(ggml_type t) { return t == GGML_TYPE_F32 || t == GGML_TYPE_F16 || t == GGML_TYPE_BF16; }

// A quantized type weights can be stored in: one ggml can dequantize. Q8_1 and Q8_K are only
// the activation side of quantized dot products (no dequantization, no CPU kernel as a weight),
// and the CPU backend still answers yes to a mul_mat with them, then crashes.
bool is_weight_quant(ggml_type t) { return ggml_is_quantized(t) && ggml_get_type_traits(t)->to_float != nullptr; }

const char* role_name(TensorRole role) {
    switch (role) {
        case TensorRole::Matmul: return "a matrix-multiplication weight";
        case TensorRole::Embedding: return "an embedding table";
        case TensorRole::Float: return "a norm, bias, scale or position tensor";
        case TensorRole::ConvKernel: return "a patch-embedding kernel";
    }
    return "a tensor";
}

const char* role_types(TensorRole role) {
    switch (role) {
        case TensorRole::Matmul:
        case TensorRole::Embedding: return "f32, f16, bf16 or a quantized type";
        case TensorRole::Float: return "f32, f16 or bf16";
        case TensorRole::ConvKernel: return "f32 or f16";
    }
    return "";
}

// Whether the device has a kernel for the op this role uses, asked the way the scheduler would
// (ggml_backend_dev_supports_op on a dummy node). The CPU backend answers yes for any type of a
// matrix product's left operand, so the type list above is checked first.
bool device_supports(ggml_backend_dev_t dev, const ggml_tensor* meta, TensorRole role) {
    ggml_init_params ip{ggml_tensor_overhead() * 4, nullptr, true};
    ggml_context* ctx = ggml_init(ip);
    ggml_tensor* w = ggml_new_tensor(ctx, meta->type, GGML_MAX_DIMS, meta->ne);
    ggml_tensor* op = nullptr;
    if (role == TensorRole::Embedding) {
        op = ggml_get_rows(ctx, ggml_reshape_2d(ctx, w, w->ne[0], ggml_nrows(w)), ggml_new_tensor_1d(ctx, GGML_TYPE_I32, 8));
    } else {
        op = ggml_mul_mat(ctx, ggml_reshape_2d(ctx, w, w->ne[0], ggml_nrows(w)),
                          ggml_new_tensor_2d(ctx, GGML_TYPE_F32, w->ne[0], 8));
    }
    const bool ok = ggml_backend_dev_supports_op(dev, op);
    ggml_free(ctx);
    return ok;
}

}  // namespace

WeightStore::WeightStore(const GgufFile& file, const Backend& backend) : file_(file), backend_(backend) {}

WeightStore::~WeightStore() {
    for (auto b : buffers_) ggml_backend_buffer_free(b);
    for (auto& [buft, c] : ctxs_) ggml_free(c);
}

bool WeightStore::has(const std::string& name) const { return file_.tensor_meta(name) != nullptr; }

ggml_tensor* WeightStore::optional(const std::string& name, const std::vector<int64_t>& shape, TensorRole role) {
    return has(name) ? require(name, shape, role) : nullptr;
}

void WeightStore::check_role(const ggml_tensor* t, TensorRole role) const {
    const ggml_type type = t->type;
    bool ok = false;
    switch (role) {
        case TensorRole::Matmul:
        case TensorRole::Embedding: ok = is_float(type) || is_weight_quant(type); break;
        case TensorRole::Float: ok = is_float(type); break;
        case TensorRole::ConvKernel: ok = type == GGML_TYPE_F32 || type == GGML_TYPE_F16; break;
    }
    if (ok && (role == TensorRole::Matmul || role == TensorRole::Embedding)) {
        ok = device_supports(backend_.device(), t, role);
        if (!ok) {
            file_.fail("tensor '" + std::string(ggml_get_name(t)) + "' has type " + ggml_type_name(type) +
                       ", which device " + backend_.device_name() + " cannot use as " + role_name(role));
        }
    }
    if (!ok) {
        file_.fail("tensor '" + std::string(ggml_get_name(t)) + "' has type " + ggml_type_name(type) + ", expected " +
                   role_types(role) + " for " + role_name(role));
    }
}

ggml_tensor* WeightStore::require(const std::string& name, const std::vector<int64_t>& shape, TensorRole role) {
    const ggml_tensor* meta = file_.tensor_meta(name);
    if (!meta) file_.fail("missing tensor '" + name + "' (expected shape " + shape_str(shape.data(), (int)shape.size()) + ")");
    bool same = true;
    for (int i = 0; i < GGML_MAX_DIMS; ++i) {
        const int64_t want = i < (int)shape.size() ? shape[i] : 1;
        if (want >= 0 && meta->ne[i] != want) same = false;  // -1: any size, but not empty
        if (want < 0 && meta->ne[i] < 1) same = false;
    }
    if (!same) {
        const bool wildcard = std::find(shape.begin(), shape.end(), -1) != shape.end();
        file_.fail("tensor '" + name + "' has shape " + shape_str(meta->ne, ggml_n_dims(meta)) +
                   ", expected " + shape_str(shape.data(), (int)shape.size()) + (wildcard ? " (-1: any positive size)" : ""));
    }
    check_role(meta, role);
    for (const auto& e : entries_) {
        if (name == ggml_get_name(e.tensor)) return e.tensor;
    }
    ggml_backend_buffer_type_t buft = backend_.weight_buffer_type(const_cast<ggml_tensor*>(meta), role == TensorRole::Matmul);
    ggml_context*& ctx = ctxs_[buft];
    if (!ctx) {
        const size_t n = static_cast<size_t>(gguf_get_n_tensors(file_.ctx())) + 1;
        ggml_init_params ip{ggml_tensor_overhead() * n, nullptr, true};
        ctx = ggml_init(ip);
    }
    // Float tensors are kept in f32: every op that reads them (mul, add, get_rows) then has a
    // kernel whatever the file stored.
    ggml_tensor* t = role == TensorRole::Float ? ggml_new_tensor(ctx, GGML_TYPE_F32, GGML_MAX_DIMS, meta->ne)
                                               : ggml_dup_tensor(ctx, meta);
    ggml_set_name(t, name.c_str());
    const int64_t id = gguf_find_tensor(file_.ctx(), name.c_str());
    entries_.push_back({t, gguf_get_tensor_offset(file_.ctx(), id), meta->type, role == TensorRole::Float});
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
    std::vector<float> widened;
    for (auto& e : entries_) {
        // Whole-tensor writes: repacking buffer types convert layouts on set.
        const int64_t n_el = ggml_nelements(e.tensor);
        const size_t n = ggml_row_size(e.file_type, e.tensor->ne[0]) * static_cast<size_t>(ggml_nrows(e.tensor));
        staging.resize(n);
        f.seekg(static_cast<std::streamoff>(file_.data_offset() + e.offset));
        f.read(staging.data(), static_cast<std::streamsize>(n));
        if (!f) file_.fail(std::string("truncated file while reading tensor '") + ggml_get_name(e.tensor) + "'");
        if (!e.float_role) {
            ggml_backend_tensor_set(e.tensor, staging.data(), 0, n);
            continue;
        }
        // A Float-role tensor: widen to f32 and refuse NaN/inf (a norm or bias that is not
        // finite turns every output into NaN).
        widened.resize(static_cast<size_t>(n_el));
        if (e.file_type == GGML_TYPE_F16) {
            ggml_fp16_to_fp32_row(reinterpret_cast<const ggml_fp16_t*>(staging.data()), widened.data(), n_el);
        } else if (e.file_type == GGML_TYPE_BF16) {
            ggml_bf16_to_fp32_row(reinterpret_cast<const ggml_bf16_t*>(staging.data()), widened.data(), n_el);
        } else {
            std::memcpy(widened.data(), staging.data(), n);
        }
        for (int64_t i = 0; i < n_el; ++i) {
            if (!std::isfinite(widened[i])) {
                file_.fail("tensor '" + std::string(ggml_get_name(e.tensor)) + "' holds a non-finite value (" +
                           std::to_string(widened[i]) + " at element " + std::to_string(i) + ")");
            }
        }
        ggml_backend_tensor_set(e.tensor, widened.data(), 0, widened.size() * sizeof(float));
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
