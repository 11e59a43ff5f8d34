// The one way a graph runs: allocate it on a scheduler, upload its inputs, compute. Every graph
// (decoder batches, question tokens, the vision encoder) goes through these functions.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "backend.h"
#include "graph/builder.h"

namespace statekv {

// A fresh allocation of g on sched; InputError("not enough device memory for <what>; <advice>")
// when it does not fit. The caller holds backend.compute_mutex().
void allocate_graph(ggml_backend_sched_t sched, GraphBuilder& g, const std::string& what, const std::string& advice);

// Uploads g's inputs and computes the allocated graph; ModelError naming <what> and the device if
// the backend fails. The caller holds backend.compute_mutex().
void compute_graph(ggml_backend_sched_t sched, GraphBuilder& g, const Backend& backend, const char* what);

// An F32 tensor of a computed graph, on the host.
std::vector<float> read_f32(const ggml_tensor* t);

// Allocate, upload, compute under the backend's lock; returns `out` (F32, may be nullptr) on the
// host. Everything the graph must compute besides `out` has been expanded into it already.
std::vector<float> run_graph(ggml_backend_sched_t sched, GraphBuilder& g, ggml_tensor* out, const Backend& backend);

}  // namespace statekv
