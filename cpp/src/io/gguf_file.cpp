#include "io/gguf_file.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "ggml.h"
#include "gguf.h"

namespace statekv {

namespace {

const char* type_name(gguf_type t) { return gguf_type_name(t); }

// Whether bytes are well-formed UTF-8 (what Python and every front end expect of GGUF strings).
bool valid_utf8(const std::string& s) {
    size_t i = 0;
    const size_t n = s.size();
    while (i < n) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        int extra = 0;
        uint32_t cp = 0;
        if (c < 0x80) { ++i; continue; }
        if ((c & 0xE0) == 0xC0) { extra = 1; cp = c & 0x1F; }
        else if ((c & 0xF0) == 0xE0) { extra = 2; cp = c & 0x0F; }
        else if ((c & 0xF8) == 0xF0) { extra = 3; cp = c & 0x07; }
        else return false;
        if (i + static_cast<size_t>(extra) >= n) return false;
        for (int k = 1; k <= extra; ++k) {
            const unsigned char d = static_cast<unsigned char>(s[i + k]);
            if ((d & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (d & 0x3F);
        }
        // Overlong forms, surrogates and values beyond U+10FFFF are not UTF-8.
        static const uint32_t min_cp[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += 1 + extra;
    }
    return true;
}

// One scalar integer of any GGUF integer type as (value, is_negative) without wrapping: u64
// values above INT64_MAX stay unsigned.
struct IntValue {
    bool ok = false;
    bool big_unsigned = false;  // a u64 above INT64_MAX
    int64_t v = 0;
    uint64_t u = 0;
};

IntValue read_int(gguf_context* ctx, int64_t id) {
    IntValue r;
    r.ok = true;
    switch (gguf_get_kv_type(ctx, id)) {
        case GGUF_TYPE_UINT8: r.v = gguf_get_val_u8(ctx, id); break;
        case GGUF_TYPE_INT8: r.v = gguf_get_val_i8(ctx, id); break;
        case GGUF_TYPE_UINT16: r.v = gguf_get_val_u16(ctx, id); break;
        case GGUF_TYPE_INT16: r.v = gguf_get_val_i16(ctx, id); break;
        case GGUF_TYPE_UINT32: r.v = gguf_get_val_u32(ctx, id); break;
        case GGUF_TYPE_INT32: r.v = gguf_get_val_i32(ctx, id); break;
        case GGUF_TYPE_INT64: r.v = gguf_get_val_i64(ctx, id); break;
        case GGUF_TYPE_UINT64:
            r.u = gguf_get_val_u64(ctx, id);
            if (r.u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) r.big_unsigned = true;
            else r.v = static_cast<int64_t>(r.u);
            break;
        default: r.ok = false;
    }
    return r;
}

std::string int_str(const IntValue& x) { return x.big_unsigned ? std::to_string(x.u) : std::to_string(x.v); }

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
    std::string v = gguf_get_val_str(ctx_, id);
    if (!valid_utf8(v)) fail("metadata key '" + key + "' is not valid UTF-8 text");
    return v;
}

uint32_t GgufFile::get_u32(const std::string& key) const {
    return static_cast<uint32_t>(get_int(key, 0, std::numeric_limits<uint32_t>::max()));
}

int64_t GgufFile::get_int(const std::string& key, int64_t lo, int64_t hi) const {
    const int64_t id = key_id(key);
    const IntValue x = read_int(ctx_, id);
    if (!x.ok) {
        fail("metadata key '" + key + "' has type " + type_name(gguf_get_kv_type(ctx_, id)) + ", expected an integer");
    }
    if (x.big_unsigned || x.v < lo || x.v > hi) {
        fail("metadata key '" + key + "' = " + int_str(x) + " is out of range, expected an integer in [" +
             std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
    return x.v;
}

int64_t GgufFile::get_int_or(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) const {
    return has(key) ? get_int(key, lo, hi) : fallback;
}

float GgufFile::get_positive_f32(const std::string& key, float hi) const {
    const float v = get_f32(key);
    if (!std::isfinite(v) || !(v > 0.0f) || v > hi) {
        fail("metadata key '" + key + "' = " + std::to_string(v) + " is out of range, expected a finite number in (0, " +
             std::to_string(hi) + "]");
    }
    return v;
}

float GgufFile::get_positive_f32_or(const std::string& key, float fallback, float hi) const {
    return has(key) ? get_positive_f32(key, hi) : fallback;
}

int64_t GgufFile::array_id(const std::string& key, std::initializer_list<int> types, const std::string& expected) const {
    const int64_t id = key_id(key);
    if (gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY) {
        fail("metadata key '" + key + "' has type " + type_name(gguf_get_kv_type(ctx_, id)) + ", expected " + expected);
    }
    const gguf_type at = gguf_get_arr_type(ctx_, id);
    if (std::find(types.begin(), types.end(), static_cast<int>(at)) == types.end()) {
        fail("metadata key '" + key + "' is an array of " + type_name(at) + ", expected " + expected);
    }
    return id;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key, int64_t lo, int64_t hi) const {
    const int64_t id = array_id(key, {GGUF_TYPE_UINT8, GGUF_TYPE_INT8, GGUF_TYPE_UINT16, GGUF_TYPE_INT16, GGUF_TYPE_UINT32,
                                      GGUF_TYPE_INT32, GGUF_TYPE_UINT64, GGUF_TYPE_INT64},
                                "an array of integers");
    const gguf_type at = gguf_get_arr_type(ctx_, id);
    const size_t n = gguf_get_arr_n(ctx_, id);
    const void* data = gguf_get_arr_data(ctx_, id);
    std::vector<int64_t> out(n);
    for (size_t i = 0; i < n; ++i) {
        bool big = false;
        int64_t v = 0;
        switch (at) {
            case GGUF_TYPE_UINT8: v = static_cast<const uint8_t*>(data)[i]; break;
            case GGUF_TYPE_INT8: v = static_cast<const int8_t*>(data)[i]; break;
            case GGUF_TYPE_UINT16: v = static_cast<const uint16_t*>(data)[i]; break;
            case GGUF_TYPE_INT16: v = static_cast<const int16_t*>(data)[i]; break;
            case GGUF_TYPE_UINT32: v = static_cast<const uint32_t*>(data)[i]; break;
            case GGUF_TYPE_INT32: v = static_cast<const int32_t*>(data)[i]; break;
            case GGUF_TYPE_INT64: v = static_cast<const int64_t*>(data)[i]; break;
            case GGUF_TYPE_UINT64: {
                const uint64_t u = static_cast<const uint64_t*>(data)[i];
                big = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
                v = big ? 0 : static_cast<int64_t>(u);
                break;
            }
            default: break;
        }
        if (big || v < lo || v > hi) {
            fail("metadata key '" + key + "' has entry " + std::to_string(i) + " = " +
                 (big ? std::to_string(static_cast<const uint64_t*>(data)[i]) : std::to_string(v)) +
                 ", expected integers in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
        }
        out[i] = v;
    }
    return out;
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

std::vector<float> GgufFile::get_finite_f32_array(const std::string& key, size_t n) const {
    const std::string expected = "an array of " + std::to_string(n) + " float32 values";
    const int64_t id = array_id(key, {GGUF_TYPE_FLOAT32, GGUF_TYPE_FLOAT64}, expected);
    if (gguf_get_arr_n(ctx_, id) != n) fail("metadata key '" + key + "' must be " + expected);
    const bool f32 = gguf_get_arr_type(ctx_, id) == GGUF_TYPE_FLOAT32;
    const void* data = gguf_get_arr_data(ctx_, id);
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) {
        out[i] = f32 ? static_cast<const float*>(data)[i] : static_cast<float>(static_cast<const double*>(data)[i]);
        if (!std::isfinite(out[i])) fail("metadata key '" + key + "' holds a non-finite value");
    }
    return out;
}

std::vector<bool> GgufFile::get_bool_array(const std::string& key) const {
    const int64_t id = array_id(key, {GGUF_TYPE_BOOL}, "an array of bool");
    const size_t n = gguf_get_arr_n(ctx_, id);
    const auto* data = static_cast<const int8_t*>(gguf_get_arr_data(ctx_, id));
    std::vector<bool> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = data[i] != 0;
    return out;
}

std::vector<int64_t> GgufFile::indices_of_strings(const std::string& key, const std::vector<std::string>& wanted) const {
    const int64_t id = gguf_find_key(ctx_, key.c_str());
    if (id < 0 || gguf_get_kv_type(ctx_, id) != GGUF_TYPE_ARRAY || gguf_get_arr_type(ctx_, id) != GGUF_TYPE_STRING) return {};
    std::vector<int64_t> out;
    const size_t n = gguf_get_arr_n(ctx_, id);
    for (size_t i = 0; i < n; ++i) {
        const char* s = gguf_get_arr_str(ctx_, id, i);
        if (s && std::find(wanted.begin(), wanted.end(), s) != wanted.end()) out.push_back(static_cast<int64_t>(i));
    }
    return out;
}

int64_t GgufFile::layers_with_prefix(const std::string& prefix) const {
    int64_t n = 0;
    for (int64_t i = 0; i < gguf_get_n_tensors(ctx_); ++i) {
        const char* name = gguf_get_tensor_name(ctx_, i);
        if (std::strncmp(name, prefix.c_str(), prefix.size()) != 0) continue;
        const char* p = name + prefix.size();
        int64_t idx = 0;
        int digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 7) idx = idx * 10 + (*p++ - '0'), ++digits;
        if (digits == 0 || *p != '.') fail("tensor '" + std::string(name) + "' has no layer index (expected " + prefix + "N.*)");
        n = std::max(n, idx + 1);
    }
    return n;
}

bool GgufFile::get_bool_or(const std::string& key, bool fallback) const {
    return has(key) ? get_bool(key) : fallback;
}

}  // namespace statekv
