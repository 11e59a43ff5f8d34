#include "session_state.h"

#include <cstdio>
#include <fstream>

#include "ggml-backend.h"
#include "gguf.h"

namespace statekv {

StateWriter::StateWriter() {
    gguf_ = gguf_init_empty();
    ggml_init_params ip{ggml_tensor_overhead() * 4096, nullptr, true};
    meta_ = ggml_init(ip);
}

StateWriter::~StateWriter() {
    gguf_free(gguf_);
    ggml_free(meta_);
}

void StateWriter::add_tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape,
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
    std::vector<uint8_t> meta(gguf_get_meta_size(gguf_));
    gguf_get_meta_data(gguf_, meta.data());
    ok = ok && std::fwrite(meta.data(), 1, meta.size(), f) == meta.size();
    const size_t align = GGUF_DEFAULT_ALIGNMENT;
    std::vector<uint8_t> buf;
    for (const auto& pieces : pieces_) {
        size_t written = 0;
        for (const auto& p : pieces) {
            buf.resize(p.nbytes);
            ggml_backend_tensor_get(p.src, buf.data(), p.offset, p.nbytes);
            ok = ok && std::fwrite(buf.data(), 1, p.nbytes, f) == p.nbytes;
            written += p.nbytes;
        }
        const size_t pad = (align - written % align) % align;
        const std::vector<uint8_t> zeros(pad, 0);
        ok = ok && std::fwrite(zeros.data(), 1, pad, f) == pad;
    }
    ok = std::fclose(f) == 0 && ok;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        throw InputError(path + ": writing the session file failed (disk full or not writable?)");
    }
}

const ggml_tensor* StateReader::tensor(const std::string& name, ggml_type type, const std::vector<int64_t>& shape) const {
    const ggml_tensor* t = file_.tensor_meta(name);
    if (!t) file_.fail("missing tensor '" + name + "' (not a complete statekv session file)");
    bool same = t->type == type;
    for (int i = 0; i < GGML_MAX_DIMS; ++i) same = same && t->ne[i] == (i < (int)shape.size() ? shape[i] : 1);
    if (!same) file_.fail("tensor '" + name + "' has another type or shape than this session expects");
    return t;
}

void StateReader::read(const std::string& name, size_t src_offset, ggml_tensor* dst, size_t dst_offset, size_t nbytes) const {
    const int64_t id = gguf_find_tensor(file_.ctx(), name.c_str());
    if (id < 0) file_.fail("missing tensor '" + name + "'");
    std::ifstream f(file_.path(), std::ios::binary);
    f.seekg(static_cast<std::streamoff>(file_.data_offset() + gguf_get_tensor_offset(file_.ctx(), id) + src_offset));
    std::vector<char> buf(nbytes);
    f.read(buf.data(), static_cast<std::streamsize>(nbytes));
    if (!f) file_.fail("truncated file while reading tensor '" + name + "'");
    ggml_backend_tensor_set(dst, buf.data(), dst_offset, nbytes);
}

}  // namespace statekv
