#include "io/session_file.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "ggml-backend.h"
#include "gguf.h"

namespace statekv {

namespace {

bool f16_finite(uint16_t h) { return (h & 0x7c00) != 0x7c00; }

// Whether stored cache data is free of NaN/inf: f32 and f16 values, the f16 scales of q8_0
// blocks (a checksum-valid file written from a session that had gone non-finite, or edited).
bool all_finite(ggml_type type, const char* data, size_t nbytes) {
    if (type == GGML_TYPE_F32) {
        for (size_t i = 0; i + 4 <= nbytes; i += 4) {
            float x;
            std::memcpy(&x, data + i, 4);
            if (!std::isfinite(x)) return false;
        }
    } else if (type == GGML_TYPE_F16 || type == GGML_TYPE_Q8_0) {
        const size_t stride = type == GGML_TYPE_F16 ? 2 : ggml_type_size(GGML_TYPE_Q8_0);
        for (size_t i = 0; i + 2 <= nbytes; i += stride) {
            uint16_t h;
            std::memcpy(&h, data + i, 2);
            if (!f16_finite(h)) return false;
        }
    }
    return true;
}

}  // namespace

uint64_t PayloadHash::mix(uint64_t h, uint64_t w) {
    h = (h ^ w) * 0x9E3779B97F4A7C15ull;  // odd multiplier: a bijection of h
    return h ^ (h >> 29);                 // also a bijection
}

void PayloadHash::update(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    total_ += n;
    while (n > 0 && n_pending_ > 0) {
        pending_ |= uint64_t(*p++) << (8 * n_pending_);
        --n;
        if (++n_pending_ == 8) {
            h_ = mix(h_, pending_);
            pending_ = 0;
            n_pending_ = 0;
        }
    }
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        std::memcpy(&w, p, 8);  // little-endian hosts: the same words on every supported platform
        h_ = mix(h_, w);
    }
    for (; n > 0; --n) pending_ |= uint64_t(*p++) << (8 * n_pending_++);
}

uint64_t PayloadHash::value() const {
    uint64_t h = n_pending_ ? mix(h_, pending_) : h_;
    return mix(h, total_);  // the length too: a truncated payload never matches
}

StateWriter::StateWriter() {
    gguf_ = gguf_init_empty();
    ggml_init_params ip{ggml_tensor_overhead() * 4096, nullptr, true};
    meta_ = ggml_init(ip);
}

StateWriter::~StateWriter() {
    gguf_free(gguf_);
    ggml_free(meta_);
}

void StateWriter::put_int(const std::string& key, int64_t value) { gguf_set_val_i64(gguf_, key.c_str(), value); }

void StateWriter::put_bool(const std::string& key, bool value) { gguf_set_val_bool(gguf_, key.c_str(), value); }

void StateWriter::put_int_array(const std::string& key, const std::vector<int64_t>& values) {
    gguf_set_arr_data(gguf_, key.c_str(), GGUF_TYPE_INT64, values.data(), values.size());
}

void StateWriter::put_tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape,
                             std::vector<Piece> pieces) {
    ggml_tensor* t = ggml_new_tensor(meta_, type, static_cast<int>(shape.size()), shape.data());
    ggml_set_name(t, name.c_str());
    size_t total = 0;
    for (const auto& p : pieces) total += p.nbytes;
    if (total != ggml_nbytes(t)) throw std::logic_error("StateWriter: pieces do not fill tensor " + name);
    gguf_add_tensor(gguf_, t);
    pieces_.push_back(std::move(pieces));
}

void StateWriter::write(const std::string& path) const {
    const std::string tmp = path + ".partial";
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw InputError(path + ": cannot open for writing");
    bool ok = true;
    // The checksum is known only once the data is written: the metadata goes first with a zero
    // checksum (a u64, so the header's size does not change) and is rewritten with the real one.
    gguf_set_val_u64(gguf_, kPayloadChecksumKey, 0);
    std::vector<uint8_t> meta(gguf_get_meta_size(gguf_));
    gguf_get_meta_data(gguf_, meta.data());
    ok = ok && std::fwrite(meta.data(), 1, meta.size(), f) == meta.size();
    const size_t align = GGUF_DEFAULT_ALIGNMENT;
    std::vector<uint8_t> buf;
    PayloadHash hash;
    for (const auto& pieces : pieces_) {
        size_t written = 0;
        for (const auto& p : pieces) {
            buf.resize(p.nbytes);
            ggml_backend_tensor_get(p.src, buf.data(), p.offset, p.nbytes);
            hash.update(buf.data(), p.nbytes);
            ok = ok && std::fwrite(buf.data(), 1, p.nbytes, f) == p.nbytes;
            written += p.nbytes;
        }
        const size_t pad = (align - written % align) % align;
        const std::vector<uint8_t> zeros(pad, 0);
        ok = ok && std::fwrite(zeros.data(), 1, pad, f) == pad;
    }
    gguf_set_val_u64(gguf_, kPayloadChecksumKey, hash.value());
    std::vector<uint8_t> final_meta(gguf_get_meta_size(gguf_));
    gguf_get_meta_data(gguf_, final_meta.data());
    ok = ok && final_meta.size() == meta.size() && std::fseek(f, 0, SEEK_SET) == 0 &&
         std::fwrite(final_meta.data(), 1, final_meta.size(), f) == final_meta.size();
    ok = std::fclose(f) == 0 && ok;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw InputError(path + ": writing the session file failed (disk full or not writable?)");
    }
}

void StateReader::expect_tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape) const {
    const ggml_tensor* t = file_.tensor_meta(name);
    if (!t) file_.fail("missing tensor '" + name + "' (not a complete statekv session file)");
    bool same = t->type == type;
    for (int i = 0; i < GGML_MAX_DIMS; ++i) same = same && t->ne[i] == (i < (int)shape.size() ? shape[i] : 1);
    if (!same) file_.fail("tensor '" + name + "' has another type or shape than this session expects");
}

void StateReader::verify_checksum() const {
    gguf_context* ctx = file_.ctx();
    const int64_t key = gguf_find_key(ctx, kPayloadChecksumKey);
    if (key < 0 || gguf_get_kv_type(ctx, key) != GGUF_TYPE_UINT64) {
        file_.fail(std::string("missing ") + kPayloadChecksumKey + " (u64): not a complete statekv session file");
    }
    const uint64_t want = gguf_get_val_u64(ctx, key);
    std::ifstream f(file_.path(), std::ios::binary);
    if (!f) file_.fail("cannot reopen file to read the session data");
    PayloadHash hash;
    std::vector<char> buf(size_t(1) << 20);
    for (int64_t i = 0; i < gguf_get_n_tensors(ctx); ++i) {
        f.seekg(static_cast<std::streamoff>(file_.data_offset() + gguf_get_tensor_offset(ctx, i)));
        for (size_t left = gguf_get_tensor_size(ctx, i); left > 0;) {
            const size_t n = std::min(left, buf.size());
            f.read(buf.data(), static_cast<std::streamsize>(n));
            if (!f) file_.fail(std::string("truncated file while reading tensor '") + gguf_get_tensor_name(ctx, i) + "'");
            hash.update(buf.data(), n);
            left -= n;
        }
    }
    if (hash.value() != want) {
        file_.fail("the session data does not match its checksum (" + std::string(kPayloadChecksumKey) +
                   "): the file is corrupt");
    }
}

void StateReader::read(const std::string& name, size_t src_offset, ggml_tensor* dst, size_t dst_offset, size_t nbytes) const {
    const int64_t id = gguf_find_tensor(file_.ctx(), name.c_str());
    if (id < 0) file_.fail("missing tensor '" + name + "'");
    std::ifstream f(file_.path(), std::ios::binary);
    f.seekg(static_cast<std::streamoff>(file_.data_offset() + gguf_get_tensor_offset(file_.ctx(), id) + src_offset));
    std::vector<char> buf(nbytes);
    f.read(buf.data(), static_cast<std::streamsize>(nbytes));
    if (!f) file_.fail("truncated file while reading tensor '" + name + "'");
    if (!all_finite(file_.tensor_meta(name)->type, buf.data(), nbytes)) {
        file_.fail("tensor '" + name + "' holds non-finite values (NaN or inf)");
    }
    ggml_backend_tensor_set(dst, buf.data(), dst_offset, nbytes);
}

}  // namespace statekv
