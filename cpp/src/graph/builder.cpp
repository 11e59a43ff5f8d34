#include "graph/builder.h"

#include <cstring>
#include <stdexcept>

#include "ggml-backend.h"

namespace statekv {

GraphBuilder::GraphBuilder(size_t max_nodes, bool on_cpu) : on_cpu(on_cpu) {
    ggml_init_params ip{ggml_tensor_overhead() * max_nodes + ggml_graph_overhead_custom(max_nodes, false),
                        nullptr, true};
    ctx_ = ggml_init(ip);
    gf_ = ggml_new_graph_custom(ctx_, max_nodes, false);
}

GraphBuilder::~GraphBuilder() { ggml_free(ctx_); }

ggml_tensor* GraphBuilder::input(ggml_type type, std::vector<int64_t> shape, const void* bytes, const char* name) {
    ggml_tensor* t = ggml_new_tensor(ctx_, type, static_cast<int>(shape.size()), shape.data());
    ggml_set_name(t, name);
    ggml_set_input(t);
    PendingInput p{t, std::vector<uint8_t>(ggml_nbytes(t))};
    std::memcpy(p.bytes.data(), bytes, p.bytes.size());
    inputs_.push_back(std::move(p));
    return t;
}

ggml_tensor* GraphBuilder::shared_input(const std::string& key, const std::function<ggml_tensor*()>& make) {
    auto it = shared_.find(key);
    if (it != shared_.end()) return it->second;
    return shared_[key] = make();
}

ggml_tensor* GraphBuilder::input_i32(const std::vector<int32_t>& v, const char* name) {
    return input(GGML_TYPE_I32, {static_cast<int64_t>(v.size())}, v.data(), name);
}

ggml_tensor* GraphBuilder::input_f32(const std::vector<float>& v, std::vector<int64_t> shape, const char* name) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    if (n != static_cast<int64_t>(v.size())) throw std::logic_error("input_f32: size does not match shape");
    return input(GGML_TYPE_F32, std::move(shape), v.data(), name);
}

ggml_tensor* GraphBuilder::alias_rows(const ggml_tensor* t, int64_t first, int64_t n, const char* name) {
    if (!t->buffer || !ggml_is_contiguous(t) || first < 0 || first + n > t->ne[1]) {
        throw std::logic_error("alias_rows: not rows of an allocated contiguous tensor");
    }
    ggml_tensor* a = ggml_new_tensor_2d(ctx_, t->type, t->ne[0], n);
    ggml_set_name(a, name);
    ggml_backend_tensor_alloc(t->buffer, a, static_cast<char*>(t->data) + first * t->nb[1]);
    return a;
}

void GraphBuilder::upload_inputs() {
    for (auto& p : inputs_) {
        // An input no computed node reads is never allocated: nothing to upload.
        if (p.tensor->buffer) ggml_backend_tensor_set(p.tensor, p.bytes.data(), 0, p.bytes.size());
    }
}

ggml_tensor* GraphBuilder::input_late(ggml_type type, std::vector<int64_t> shape, const char* name) {
    ggml_tensor* t = ggml_new_tensor(ctx_, type, static_cast<int>(shape.size()), shape.data());
    ggml_set_name(t, name);
    ggml_set_input(t);
    return t;
}

}  // namespace statekv
