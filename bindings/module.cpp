// pybind11 module statekv._core: numpy in, numpy out, no logic of its own.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <limits>

#include "statekv/statekv.h"

namespace py = pybind11;
using namespace pybind11::literals;
using namespace statekv;

namespace {

template <typename T>
std::vector<T> to_vector(const py::array& a) {
    auto c = py::array_t<T, py::array::c_style | py::array::forcecast>::ensure(a);
    if (!c) throw InputError("expected a numeric array");
    return std::vector<T>(c.data(), c.data() + c.size());
}

// Tokens from the Python-side arguments (already shaped by the Python layer).
Tokens make_tokens(const py::array& ids, const py::object& positions, const py::object& embeddings,
                   const py::object& rows, const py::object& blocks = py::none()) {
    Tokens t;
    py::array ids_arr = py::array::ensure(ids);
    if (ids_arr.ndim() != 1) throw InputError("tokens must be a 1-D sequence of token ids");
    t.ids = to_vector<int32_t>(ids_arr);
    if (!positions.is_none()) {
        py::array p = py::array::ensure(positions);
        if (!p) throw InputError("positions must be an integer array of shape (n,) or (n_axes, n)");
        if (p.ndim() == 1) {
            t.n_position_axes = 1;
        } else if (p.ndim() == 2) {
            t.n_position_axes = static_cast<int>(p.shape(0));
        } else {
            throw InputError("positions must have shape (n,) or (n_axes, n)");
        }
        t.positions = to_vector<int32_t>(p);
    }
    if (!embeddings.is_none()) {
        py::array e = py::array::ensure(embeddings);
        if (e.ndim() != 2) throw InputError("embeddings must have shape (k, width)");
        if (rows.is_none()) throw InputError("embeddings given without embedding_rows");
        py::array r = py::array::ensure(rows);
        if (r.ndim() != 1 || r.shape(0) != e.shape(0)) {
            throw InputError("embedding_rows must be a 1-D array with one row index per embedding row (" +
                             std::to_string(e.shape(0)) + ")");
        }
        t.embeddings = to_vector<float>(e);
        t.embedding_rows = to_vector<int32_t>(r);
    } else if (!rows.is_none()) {
        throw InputError("embedding_rows given without embeddings");
    }
    if (!blocks.is_none()) {
        py::array b = py::array::ensure(blocks);
        if (!b || b.ndim() != 1) throw InputError("blocks must be a 1-D integer array, one value per token");
        t.blocks = to_vector<int32_t>(b);
    }
    return t;
}

// Frames for Session::add_frames: a C-contiguous uint8 array (n_frames, height, width, 3).
py::array_t<uint8_t, py::array::c_style> frame_bytes(const py::object& pixels) {
    const char* expected = "pixels must be a uint8 array of shape (n_frames, height, width, 3): RGB bytes, already resized";
    py::array a = py::array::ensure(pixels);
    if (!a || !a.dtype().is(py::dtype::of<uint8_t>())) throw InputError(expected);
    if (a.ndim() != 4 || a.shape(3) != 3) throw InputError(std::string(expected) + ", got " + std::to_string(a.ndim()) + " dimensions");
    for (int i = 0; i < 3; ++i) {
        if (a.shape(i) <= 0 || a.shape(i) > std::numeric_limits<int>::max()) {
            throw InputError(std::string(expected) + ", got a dimension of " + std::to_string(a.shape(i)));
        }
    }
    return py::array_t<uint8_t, py::array::c_style>::ensure(a);
}

// The step layouts of Session::add_frames: token ids, where each step's visual rows go, and
// optional positions, one entry per step.
std::vector<Tokens> frame_steps(const py::sequence& tokens, const py::sequence& rows, const py::object& positions) {
    const size_t n = py::len(tokens);
    if (py::len(rows) != n) {
        throw InputError("embedding_rows must give one row list per step (" + std::to_string(n) + "), got " +
                         std::to_string(py::len(rows)));
    }
    if (!positions.is_none() && py::len(positions) != n) {
        throw InputError("positions must give one entry per step (" + std::to_string(n) + ") or be None");
    }
    std::vector<Tokens> steps;
    for (size_t i = 0; i < n; ++i) {
        const py::object pos = positions.is_none() ? py::none() : py::object(py::reinterpret_borrow<py::sequence>(positions)[i]);
        py::array ids = py::array::ensure(py::object(tokens[i]));
        if (!ids) throw InputError("tokens of step " + std::to_string(i) + " must be a 1-D sequence of token ids");
        Tokens t = make_tokens(ids, pos, py::none(), py::none());
        py::array r = py::array::ensure(py::object(rows[i]));
        if (!r || r.ndim() != 1) throw InputError("embedding_rows of step " + std::to_string(i) + " must be a 1-D sequence of row indices");
        t.embedding_rows = to_vector<int32_t>(r);
        steps.push_back(std::move(t));
    }
    return steps;
}

// Session::stats, Session::options and Model::vision_info as dicts.
py::dict stats_dict(const SessionStats& st) {
    return py::dict("tokens_detailed"_a = st.tokens_detailed, "tokens_carried"_a = st.tokens_carried, "steps"_a = st.steps,
                    "bytes_detailed"_a = st.bytes_detailed, "bytes_carried"_a = st.bytes_carried,
                    "step_seconds"_a = st.step_seconds);
}

py::dict options_dict(const SessionOptions& o) {
    const py::object expected_length = o.expected_length ? py::object(py::int_(o.expected_length)) : py::none();
    const py::object rope_scale = o.rope_scale > 0 ? py::object(py::float_(o.rope_scale)) : py::none();
    return py::dict("mode"_a = o.mode, "budget"_a = o.budget, "window"_a = o.window, "kv_type"_a = o.kv_type,
                    "expected_length"_a = expected_length, "rope_scale"_a = rope_scale, "score_decay"_a = o.score_decay,
                    "pin_prefix"_a = o.pin_prefix);
}

py::dict vision_dict(const VisionInfo& v) {
    return py::dict("projector"_a = v.projector, "image_size"_a = v.image_size, "patch_size"_a = v.patch_size,
                    "size_multiple"_a = v.size_multiple, "frames_per_patch"_a = v.frames_per_patch,
                    "n_deepstack"_a = v.n_deepstack, "row_width"_a = v.row_width, "image_mean"_a = v.image_mean,
                    "image_std"_a = v.image_std);
}

// A Python callable(token) -> bool|None as a TokenCallback (called with the GIL re-acquired).
TokenCallback wrap_callback(const py::object& callback) {
    if (callback.is_none()) return nullptr;
    return [callback](int32_t tok) {
        py::gil_scoped_acquire acquire;
        py::object r = callback(tok);
        return r.is_none() || r.cast<bool>();
    };
}

// A Session method taking one batch of tokens, as a Python method (ids, positions, embeddings,
// embedding_rows, blocks) that runs without the GIL.
auto feed_tokens(void (Session::*method)(const Tokens&)) {
    return [method](Session& self, const py::array& ids, const py::object& positions, const py::object& embeddings,
                    const py::object& rows, const py::object& blocks) {
        Tokens t = make_tokens(ids, positions, embeddings, rows, blocks);
        py::gil_scoped_release release;
        (self.*method)(t);
    };
}

// An error message as a Python str, undecodable bytes replaced.
PyObject* message_text(const char* what) {
    return PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "replace");
}

// A method of a session run without the GIL: every Session call takes the session's lock, and a
// thread holding that lock may be waiting for the GIL in a token callback.
template <typename R, typename... Args>
auto unlocked(R (Session::*method)(Args...) const) {
    return [method](const Session& self, Args... args) {
        py::gil_scoped_release release;
        return (self.*method)(args...);
    };
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "statekv native core (see the statekv package for the documented API)";

    static py::exception<ModelError> model_error(m, "ModelError", PyExc_RuntimeError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const ModelError& e) {
            // Messages quote file contents (keys, strings): never let bytes that are not UTF-8
            // turn the error into a UnicodeDecodeError.
            py::set_error(model_error, py::reinterpret_steal<py::object>(message_text(e.what())));
        } catch (const InputError& e) {
            py::set_error(PyExc_ValueError, py::reinterpret_steal<py::object>(message_text(e.what())));
        }
    });

    m.def("ggml_info", [] { return ggml_info(); });

    m.def("backends", [] {
        py::list out;
        for (const auto& d : backends()) {
            py::dict x;
            x["name"] = d.name;
            x["description"] = d.description;
            x["type"] = d.type;
            x["memory_free"] = d.memory_free;
            x["memory_total"] = d.memory_total;
            out.append(x);
        }
        return out;
    });

    py::class_<Session>(m, "Session")
        .def("prefill", feed_tokens(&Session::prefill), py::arg("tokens"), py::arg("positions") = py::none(),
             py::arg("embeddings") = py::none(), py::arg("embedding_rows") = py::none(), py::arg("blocks") = py::none())
        .def("add_step", feed_tokens(&Session::add_step), py::arg("tokens"), py::arg("positions") = py::none(),
             py::arg("embeddings") = py::none(), py::arg("embedding_rows") = py::none(), py::arg("blocks") = py::none())
        .def("add_frames",
             [](Session& self, const py::object& pixels, const py::sequence& tokens, const py::sequence& rows,
                const py::object& positions) {
                 auto px = frame_bytes(pixels);
                 std::vector<Tokens> steps = frame_steps(tokens, rows, positions);
                 const int n = static_cast<int>(px.shape(0)), h = static_cast<int>(px.shape(1)), w = static_cast<int>(px.shape(2));
                 py::gil_scoped_release release;
                 self.add_frames(px.data(), n, h, w, steps);
             },
             py::arg("pixels"), py::arg("tokens"), py::arg("embedding_rows"), py::arg("positions") = py::none())
        .def("question_logits",
             [](Session& self, const py::array& ids, const py::object& positions, int n_vocab, int last_rows) {
                 Tokens t = make_tokens(ids, positions, py::none(), py::none());
                 std::vector<float> out;
                 {
                     py::gil_scoped_release release;
                     out = self.question_logits(t, last_rows);
                 }
                 const size_t n_rows = out.size() / static_cast<size_t>(n_vocab);
                 py::array_t<float> arr({static_cast<py::ssize_t>(n_rows), static_cast<py::ssize_t>(n_vocab)});
                 std::copy(out.begin(), out.end(), arr.mutable_data());
                 return arr;
             },
             py::arg("tokens"), py::arg("positions"), py::arg("n_vocab"), py::arg("last_rows") = 0)
        .def("generate",
             [](Session& self, const py::array& ids, int max_tokens, const py::object& positions, float temperature,
                int top_k, float top_p, float min_p, float repeat_penalty, int repeat_last_n, uint64_t seed,
                const std::vector<int32_t>& stop, bool ignore_eos, const py::object& callback) {
                 Tokens t = make_tokens(ids, positions, py::none(), py::none());
                 // The fields in SamplingOptions' order.
                 const SamplingOptions o{temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop, ignore_eos};
                 TokenCallback cb = wrap_callback(callback);
                 py::gil_scoped_release release;
                 return self.generate(t, max_tokens, o, cb);
             },
             py::arg("tokens"), py::arg("max_tokens"), py::arg("positions"), py::arg("temperature"), py::arg("top_k"),
             py::arg("top_p"), py::arg("min_p"), py::arg("repeat_penalty"), py::arg("repeat_last_n"), py::arg("seed"),
             py::arg("stop"), py::arg("ignore_eos"), py::arg("callback"))
        .def("carried",
             [](Session& self, int layer, int n_head_kv) {
                 int n_kept = 0;
                 std::vector<int32_t> v;
                 {
                     py::gil_scoped_release release;
                     v = self.carried(layer, &n_kept);
                 }
                 py::array_t<int32_t> arr({static_cast<py::ssize_t>(n_head_kv), static_cast<py::ssize_t>(n_kept)});
                 std::copy(v.begin(), v.end(), arr.mutable_data());
                 return arr;
             })
        .def("fork", unlocked(&Session::fork))
        .def("save",
             [](const Session& self, const std::string& path, const std::string& app_data) {
                 py::gil_scoped_release release;
                 self.save(path, app_data);
             },
             py::arg("path"), py::arg("app_data") = std::string())
        .def_property_readonly("app_data", [](const Session& self) { return py::bytes(self.app_data()); })
        .def("stats", [](const Session& self) { return stats_dict(unlocked(&Session::stats)(self)); })
        .def("options", [](const Session& self) { return options_dict(unlocked(&Session::options)(self)); })
        .def_property_readonly("n_tokens", unlocked(&Session::n_tokens))
        .def_property_readonly("next_position", unlocked(&Session::next_position));

    py::class_<Model, std::shared_ptr<Model>>(m, "Model")
        .def(py::init([](const std::string& path, const std::string& device, int threads, const std::string& mmproj,
                         int overlap_encoder) {
                 py::gil_scoped_release release;
                 return std::make_shared<Model>(path, ModelOptions{device, threads, mmproj, overlap_encoder});
             }),
             py::arg("path"), py::arg("device") = "", py::arg("threads") = 0, py::arg("mmproj") = "",
             py::arg("overlap_encoder") = -1)
        .def_property_readonly("has_vision", &Model::has_vision)
        .def_property_readonly("encoder_overlaps", &Model::encoder_overlaps)
        .def("vision_tokens_per_patch", &Model::vision_tokens_per_patch)
        .def_property_readonly("vision_row_width", &Model::vision_row_width)
        .def_property_readonly("vision_frames_per_patch", &Model::vision_frames_per_patch)
        .def("vision_info", [](const Model& self) { return vision_dict(self.vision_info()); })
        .def("encode_frames",
             [](Model& self, const py::array& pixels) {
                 auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(pixels);
                 if (!a || a.ndim() != 4 || a.shape(1) != 3) {
                     throw InputError("pixels must be a float32 array of shape (n_frames, 3, height, width)");
                 }
                 const int n = static_cast<int>(a.shape(0)), h = static_cast<int>(a.shape(2)), w = static_cast<int>(a.shape(3));
                 std::vector<float> out;
                 int per = 0, width = 0, fpp = 1;
                 {
                     py::gil_scoped_release release;
                     out = self.encode_frames(a.data(), n, h, w);
                     per = self.vision_tokens_per_patch(h, w);
                     width = self.vision_row_width();
                     fpp = self.vision_frames_per_patch();
                 }
                 py::array_t<float> arr({static_cast<py::ssize_t>(n / fpp), static_cast<py::ssize_t>(per),
                                         static_cast<py::ssize_t>(width)});
                 std::copy(out.begin(), out.end(), arr.mutable_data());
                 return arr;
             },
             py::arg("pixels"))
        .def_property_readonly("n_vocab", &Model::n_vocab)
        .def_property_readonly("n_embd", &Model::n_embd)
        .def("info", &Model::info)
        .def("load_session",
             [](Model& self, const std::string& path) {
                 py::gil_scoped_release release;
                 return self.load_session(path);
             })
        .def("session",
             [](Model& self, const std::string& mode, int budget, int window, const std::string& kv_type,
                int expected_length, float rope_scale, int detailed_chunk, float score_decay, bool pin_prefix) {
                 // The fields in SessionOptions' order.
                 return self.session(SessionOptions{mode, budget, window, kv_type, expected_length, rope_scale, detailed_chunk,
                                                    score_decay, pin_prefix});
             },
             py::arg("mode"), py::arg("budget"), py::arg("window"), py::arg("kv_type"), py::arg("expected_length"),
             py::arg("rope_scale"), py::arg("detailed_chunk"), py::arg("score_decay"), py::arg("pin_prefix"))
        .def(
            "logits",
            [](Model& self, const py::array& ids, const py::object& positions, const py::object& embeddings,
               const py::object& rows, const py::object& blocks) {
                Tokens t = make_tokens(ids, positions, embeddings, rows, blocks);
                std::vector<float> out;
                {
                    py::gil_scoped_release release;
                    out = self.logits(t);
                }
                const py::ssize_t n = static_cast<py::ssize_t>(t.ids.size());
                py::array_t<float> arr({n, static_cast<py::ssize_t>(self.n_vocab())});
                std::copy(out.begin(), out.end(), arr.mutable_data());
                return arr;
            },
            py::arg("tokens"), py::arg("positions") = py::none(), py::arg("embeddings") = py::none(),
            py::arg("embedding_rows") = py::none(), py::arg("blocks") = py::none())
        .def(
            "generate",
            [](Model& self, const py::array& ids, int max_tokens, const py::object& positions,
               const py::object& embeddings, const py::object& rows, const std::string& kv_type,
               const std::vector<int32_t>& stop, bool ignore_eos, const py::object& callback) {
                Tokens t = make_tokens(ids, positions, embeddings, rows);
                GenerateOptions o;
                o.kv_type = kv_type;
                o.stop = stop;
                o.ignore_eos = ignore_eos;
                TokenCallback cb = wrap_callback(callback);
                py::gil_scoped_release release;
                return self.generate(t, max_tokens, o, cb);
            },
            py::arg("tokens"), py::arg("max_tokens"), py::arg("positions") = py::none(),
            py::arg("embeddings") = py::none(), py::arg("embedding_rows") = py::none(), py::arg("kv_type") = "f16",
            py::arg("stop") = std::vector<int32_t>{}, py::arg("ignore_eos") = false, py::arg("callback") = py::none())
        .def(
            "bench_prompt",
            [](Model& self, int n_prompt, int n_depth, int reps, const std::string& kv_type, int n_ubatch) {
                PromptBenchResult r;
                {
                    py::gil_scoped_release release;
                    r = self.bench_prompt(n_prompt, n_depth, reps, kv_type, n_ubatch);
                }
                return r.seconds;
            },
            py::arg("n_prompt"), py::arg("n_depth"), py::arg("repetitions"), py::arg("kv_type") = "f16",
            py::arg("n_ubatch") = 512);
}
