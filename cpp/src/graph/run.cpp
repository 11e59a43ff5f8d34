#include "graph/run.h"

#include "statekv/statekv.h"

namespace statekv {

void allocate_graph(ggml_backend_sched_t sched, GraphBuilder& g, const std::string& what, const std::string& advice) {
    ggml_backend_sched_reset(sched);
    // A fresh allocation plan for every graph: ggml reuses the previous plan when the node count
    // matches and every node still fits, even if in-place decisions made for other shapes no
    // longer hold (seen with broadcast adds); planning costs microseconds.
    if (!ggml_backend_sched_reserve(sched, g.graph()) || !ggml_backend_sched_alloc_graph(sched, g.graph())) {
        throw InputError("not enough device memory for " + what + "; " + advice);
    }
}

void compute_graph(ggml_backend_sched_t sched, GraphBuilder& g, const Backend& backend, const char* what) {
    g.upload_inputs();
    if (ggml_backend_sched_graph_compute(sched, g.graph()) != GGML_STATUS_SUCCESS) {
        throw ModelError(std::string(what) + " failed on device " + backend.device_name());
    }
}

std::vector<float> read_f32(const ggml_tensor* t) {
    std::vector<float> host(ggml_nelements(t));
    ggml_backend_tensor_get(t, host.data(), 0, host.size() * sizeof(float));
    return host;
}

std::vector<float> run_graph(ggml_backend_sched_t sched, GraphBuilder& g, ggml_tensor* out, const Backend& backend) {
    if (out) {
        ggml_set_output(out);
        g.expand(out);
    }
    std::lock_guard<std::mutex> lock(backend.compute_mutex());
    allocate_graph(sched, g, "the compute graph (" + std::to_string(ggml_graph_n_nodes(g.graph())) + " nodes)",
                   "use fewer tokens per call");
    compute_graph(sched, g, backend, "graph computation");
    return out ? read_f32(out) : std::vector<float>();
}

}  // namespace statekv
