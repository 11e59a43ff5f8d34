#include "gguf_file.h"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "ggml.h"
#include "gguf.h"

namespace statekv {

namespace {

const char* type_name(gguf_type t) { return gguf_type_name(t); }

}  // namespace

GgufFile::GgufFile(const std::string& path) : path_(path) {
    // Check what gguf.h would only report on stderr, so the error says what is wrong.
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw ModelError(path + ": cannot open file (missing or unreadable)");
    file_size_ = static_cast<size_t>(f.tellg());
    f.seekg(0);
    char magic[4] = {0, 0, 0, 0};
    f.read(magic, 4);
    if (file_size_ < 4 || std::memcmp(magic, "GGUF", 4) != 0) {
        throw ModelError(path + ": not a GGUF file (bad magic: expected 'GGUF' in the first 4 bytes)");
    }
    gguf_init_params params{/*no_alloc*/ true, /*ctx*/ &meta_};
    ctx_ = gguf_init_from_file(path.c_str(), params);
    if (!ctx_) {
        throw ModelError(path + ": corrupt or truncated GGUF header (gguf could not parse the "
                                "metadata or tensor table)");
    }
    // gguf.h with no_alloc does not read tensor data: check every tensor lies inside the file.
    const size_t data0 = gguf_get_data_offset(ctx_);
    const int64_t n = gguf_get_n_tensors(ctx_);
    for (int64_t i = 0; i < n; ++i) {
        const size_t end = data0 + gguf_get_tensor_offset(ctx_, i) + gguf_get_tensor_size(ctx_, i);
        if (end > file_size_) {
            std::string name = gguf_get_tensor_name(ctx_, i);
            gguf_free(ctx_);
            ggml_free(meta_);
            ctx_ = nullptr;
            meta_ = nullptr;
            throw ModelError(path + ": truncated file: tensor '" + name + "' ends at byte " +
                             std::to_string(end) + " but the file has " +
                             std::to_string(file_size_) + " bytes");
        }
    }
}

GgufFile::~GgufFile() {
    if (ctx_) gguf_free(ctx_);
    if (meta_) ggml_free(meta_);
}

ggml_tensor* GgufFile::tensor_meta(const std::string& name) const { return ggml_get_tensor(meta_, name.c_str()); }

size_t GgufFile::data_offset() const { return gguf_get_data_offset(ctx_); }

void GgufFile::fail(const std::string& what) const { throw ModelError(path_ + ": " + what); }

bool GgufFile::has(const std::string& key) const { return gguf_find_key(ctx_, key.c_str()) >= 0; }

int64_t GgufFile::key_id(const std::string& key) const {
    const int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0) fail("missing metadata key '" + key + "'");
    return id;
}

std::string GgufFile::get_str(const std::string& key) const {
    const int64_t id = key_id(key);
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_STRING) {
        fail("metadata key '" + key + "' has type " + type_name(gguf_get_kv_type(ctx_, id)) +
             ", expected string");
    }
    return gguf_get_val_str(ctx_, id);
}

uint32_t GgufFile::get_u32(const std::string& key) const {
    const int64_t id = key_id(key);
    int64_t v = 0;
    switch (gguf_get_kv_type(ctx_, id)) {
        case GGUF_TYPE_UINT8: v = gguf_get_val_u8(ctx_, id); break;
        case GGUF_TYPE_INT8: v = gguf_get_val_i8(ctx_, id); break;
        case GGUF_TYPE_UINT16: v = gguf_get_val_u16(ctx_, id); break;
        case GGUF_TYPE_INT16: v = gguf_get_val_i16(ctx_, id); break;
        case GGUF_TYPE_UINT32: v = gguf_get_val_u32(ctx_, id); break;
        case GGUF_TYPE_INT32: v = gguf_get_val_i32(ctx_, id); break;
        case GGUF_TYPE_UINT64: {
            const uint64_t u = gguf_get_val_u64(ctx_, id);
            v = u > std::numeric_limits<uint32_t>::max() ? -1 : static_cast<int64_t>(u);
            break;
        }
        case GGUF_TYPE_INT64: v = gguf_get_val_i64(ctx_, id); break;
        default:
            fail("metadata key '" + key + "' has type " + type_name(gguf_get_kv_type(ctx_, id)) +
                 ", expected an integer");
    }
    if (v < 0 || v > std::numeric_limits<uint32_t>::max()) {
        fail("metadata key '" + key + "' = " + std::to_string(v) +
             " is out of range, expected a non-negative 32-bit integer");
    }
    return static_cast<uint32_t>(v);
}

float GgufFile::get_f32(const std::string& key) const {
    const int64_t id = key_id(key);
    switch (gguf_get_kv_type(ctx_, id)) {
        case GGUF_TYPE_FLOAT32: return gguf_get_val_f32(ctx_, id);
        case GGUF_TYPE_FLOAT64: return static_cast<float>(gguf_get_val_f64(ctx_, id));
        default:
            fail("metadata key '" + key + "' has type " + type_name(gguf_get_kv_type(ctx_, id)) +
                 ", expected a float");
    }
}

bool GgufFile::get_bool(const std::string& key) const {
    const int64_t id = key_id(key);
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_BOOL) {
        fail("metadata key '" + key + "' has type " + type_name(gguf_get_kv_type(ctx_, id)) +
             ", expected bool");
    }
    return gguf_get_val_bool(ctx_, id);
}

std::vector<int32_t> GgufFile::get_i32_array(const std::string& key) const {
    const int64_t id = key_id(key);
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY) {
        fail("metadata key '" + key + "' has type " + type_name(gguf_get_kv_type(ctx_, id)) +
             ", expected an array of integers");
    }
    const gguf_type at = gguf_get_arr_type(ctx_, id);
    const size_t n = gguf_get_arr_n(ctx_, id);
    const void* data = gguf_get_arr_data(ctx_, id);
    std::vector<int32_t> out(n);
    for (size_t i = 0; i < n; ++i) {
        switch (at) {
            case GGUF_TYPE_INT32: out[i] = static_cast<const int32_t*>(data)[i]; break;
            case GGUF_TYPE_UINT32: out[i] = static_cast<int32_t>(static_cast<const uint32_t*>(data)[i]); break;
            case GGUF_TYPE_INT64: out[i] = static_cast<int32_t>(static_cast<const int64_t*>(data)[i]); break;
            case GGUF_TYPE_UINT64: out[i] = static_cast<int32_t>(static_cast<const uint64_t*>(data)[i]); break;
            default:
                fail("metadata key '" + key + "' is an array of " + type_name(at) +
                     ", expected integers");
        }
    }
    return out;
}

uint32_t GgufFile::get_u32_or(const std::string& key, uint32_t fallback) const {
    return has(key) ? get_u32(key) : fallback;
}
float GgufFile::get_f32_or(const std::string& key, float fallback) const {
    return has(key) ? get_f32(key) : fallback;
}
bool GgufFile::get_bool_or(const std::string& key, bool fallback) const {
    return has(key) ? get_bool(key) : fallback;
}

}  // namespace statekv
