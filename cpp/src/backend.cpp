#include "backend.h"

#include <algorithm>
#include <thread>

#include "statekv/statekv.h"

namespace statekv {

namespace {

const char* dev_type_name(enum ggml_backend_dev_type t) {
    switch (t) {
        case GGML_BACKEND_DEVICE_TYPE_CPU: return "cpu";
        case GGML_BACKEND_DEVICE_TYPE_GPU: return "gpu";
        case GGML_BACKEND_DEVICE_TYPE_IGPU: return "igpu";
        case GGML_BACKEND_DEVICE_TYPE_ACCEL: return "accel";
        default: break;
    }
    return "unknown";
}

void load_backends_once() {
    // Dynamically loadable backends (GGML_BACKEND_DL builds) register themselves here;
    // in builds that link backends directly this finds nothing new.
    static bool done = [] {
        if (ggml_backend_dev_count() == 0) ggml_backend_load_all();
        return true;
    }();
    (void)done;
}

void set_threads(ggml_backend_t backend, int n) {
    ggml_backend_dev_t dev = ggml_backend_get_device(backend);
    ggml_backend_reg_t reg = dev ? ggml_backend_dev_backend_reg(dev) : nullptr;
    if (!reg) return;
    auto fn = reinterpret_cast<ggml_backend_set_n_threads_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads"));
    if (fn) fn(backend, n);
}

}  // namespace

std::vector<DeviceInfo> backends() {
    load_backends_once();
    std::vector<DeviceInfo> out;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        DeviceInfo info;
        info.name = ggml_backend_dev_name(d);
        info.description = ggml_backend_dev_description(d);
        info.type = dev_type_name(ggml_backend_dev_type(d));
        ggml_backend_dev_memory(d, &info.memory_free, &info.memory_total);
        out.push_back(info);
    }
    return out;
}

Backend::Backend(const std::string& device, int threads) {
    load_backends_once();
    if (device.empty()) {
        device_ = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
        if (!device_) device_ = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_IGPU);
        if (!device_) device_ = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    } else {
        device_ = ggml_backend_dev_by_name(device.c_str());
        if (!device_) {
            std::string names;
            for (const auto& d : backends()) names += (names.empty() ? "" : ", ") + d.name;
            throw InputError("unknown device '" + device + "'; available: " + names);
        }
    }
    if (!device_) throw ModelError("ggml offers no device at all (no CPU backend registered)");
    main_ = ggml_backend_dev_init(device_, nullptr);
    if (!main_) throw ModelError("could not initialise ggml device '" + device_name() + "'");
    if (is_cpu()) {
        cpu_ = main_;
    } else {
        ggml_backend_dev_t cpu_dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
        cpu_ = cpu_dev ? ggml_backend_dev_init(cpu_dev, nullptr) : nullptr;
    }
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    threads_ = threads > 0 ? threads : hw;
    if (threads < 0) throw InputError("threads must be >= 0 (0 = all cores), got " + std::to_string(threads));
    if (cpu_) set_threads(cpu_, threads_);
    if (cpu_ && is_cpu()) {
        ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(device_);
        auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
            ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
        if (get_extra) {
            for (ggml_backend_buffer_type_t* b = get_extra(device_); b && *b; ++b) cpu_extra_.push_back(*b);
        }
    }
}

Backend::~Backend() {
    if (cpu_ && cpu_ != main_) ggml_backend_free(cpu_);
    if (main_) ggml_backend_free(main_);
}

std::string Backend::device_name() const { return ggml_backend_dev_name(device_); }

bool Backend::is_cpu() const { return ggml_backend_dev_type(device_) == GGML_BACKEND_DEVICE_TYPE_CPU; }

ggml_backend_buffer_type_t Backend::default_buffer_type() const { return ggml_backend_dev_buffer_type(device_); }

ggml_backend_buffer_type_t Backend::weight_buffer_type(ggml_tensor* weight, bool used_in_matmul) const {
    if (!used_in_matmul || cpu_extra_.empty() || ggml_n_dims(weight) != 2) return default_buffer_type();
    // Ask the device whether a mat-mul with this weight in that buffer type is supported, the
    // same test llama.cpp makes (the extra types only accept the layouts they can repack).
    ggml_init_params ip{ggml_tensor_overhead() * 4, nullptr, true};
    ggml_context* ctx = ggml_init(ip);
    ggml_tensor* w = ggml_dup_tensor(ctx, weight);
    ggml_tensor* x = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, weight->ne[0], 512);
    ggml_tensor* op = ggml_mul_mat(ctx, w, x);
    ggml_backend_buffer_type_t chosen = default_buffer_type();
    for (ggml_backend_buffer_type_t buft : cpu_extra_) {
        ggml_backend_buffer_t dummy = ggml_backend_buft_alloc_buffer(buft, 0);
        w->buffer = dummy;
        const bool ok = ggml_backend_dev_supports_op(device_, op);
        w->buffer = nullptr;
        ggml_backend_buffer_free(dummy);
        if (ok) {
            chosen = buft;
            break;
        }
    }
    ggml_free(ctx);
    return chosen;
}

ggml_backend_sched_t Backend::new_scheduler(size_t graph_size) const {
    std::vector<ggml_backend_t> list{main_};
    if (cpu_ && cpu_ != main_) list.push_back(cpu_);
    return ggml_backend_sched_new(list.data(), nullptr, static_cast<int>(list.size()), graph_size,
                                  /*parallel*/ false, /*op_offload*/ true);
}

}  // namespace statekv
