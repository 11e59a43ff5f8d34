// Device selection through ggml-backend, and the scheduler that runs our graphs on it.
#pragma once

#include <mutex>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"

namespace statekv {

class Backend {
public:
    // device: a name from statekv::backends() or empty for the best available GPU, else CPU.
    Backend(const std::string& device, int threads);
    ~Backend();
    Backend(const Backend&) = delete;
    Backend& operator=(const Backend&) = delete;

    ggml_backend_dev_t device() const { return device_; }
    std::string device_name() const;
    bool is_cpu() const;
    int threads() const { return threads_; }

    // Buffer type a weight should live in. Weights that feed a matrix multiplication on the CPU
    // may use the CPU's extra buffer types (repacked layouts for faster kernels), as llama.cpp
    // does; everything else uses the device's own buffer type.
    ggml_backend_buffer_type_t weight_buffer_type(ggml_tensor* weight, bool used_in_matmul) const;
    ggml_backend_buffer_type_t default_buffer_type() const;

    // Scheduler over [device, CPU]; graphs are allocated and run through it.
    ggml_backend_sched_t new_scheduler(size_t graph_size) const;

    // Held while a graph is allocated and computed: a ggml backend (the CPU backend's work
    // buffer and thread pool, a GPU stream) runs one graph at a time, and every session of a
    // model shares the model's backend.
    std::mutex& compute_mutex() const { return compute_mutex_; }

private:
    ggml_backend_dev_t device_ = nullptr;
    ggml_backend_t main_ = nullptr;
    ggml_backend_t cpu_ = nullptr;  // == main_ when the device is the CPU
    std::vector<ggml_backend_buffer_type_t> cpu_extra_;
    int threads_ = 1;
    mutable std::mutex compute_mutex_;
};

}  // namespace statekv
