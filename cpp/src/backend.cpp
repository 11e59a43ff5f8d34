#include "backend.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#if defined(_WIN32)
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <windows.h>
#else
#include <dlfcn.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "graph/packed_matmul.h"
#include "statekv/statekv.h"

#ifndef STATEKV_GGML_ORIGIN
#define STATEKV_GGML_ORIGIN "unknown"
#endif

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

// ---- loading ggml's backend modules -------------------------------------------------------
//
// ggml is built with GGML_BACKEND_DL: each backend, and each CPU variant (x64, haswell,
// skylakex, ..., compiled for one instruction set each), is a module installed next to libggml.
// We load them ourselves rather than with ggml_backend_load_all(), which looks beside the
// executable (python3, not our package) and would pick an AMX variant on a CPU whose OS refuses
// AMX tile state (a VM), which crashes in the AMX kernels.

struct LoadedGgml {
    std::string library;      // libggml's path
    std::string cpu_variant;  // e.g. "haswell"; "" for a single (non-variant) CPU module
    std::string cpu_module;
    std::string cpu_features;
    std::string notes;        // why variants were passed over
};

LoadedGgml& loaded_ggml() {
    static LoadedGgml l;
    return l;
}

#if defined(_WIN32)
using LibHandle = HMODULE;
LibHandle lib_open(const std::string& path) { return LoadLibraryA(path.c_str()); }
void* lib_sym(LibHandle h, const char* name) { return reinterpret_cast<void*>(GetProcAddress(h, name)); }
void lib_close(LibHandle h) { FreeLibrary(h); }
std::string module_path_of(const void* addr) {
    HMODULE h = nullptr;
    if (!GetModuleHandleExA(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                            static_cast<LPCSTR>(addr), &h))
        return {};
    char buf[4096];
    const DWORD n = GetModuleFileNameA(h, buf, sizeof(buf));
    return std::string(buf, n);
}
#else
using LibHandle = void*;
LibHandle lib_open(const std::string& path) { return dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL); }
void* lib_sym(LibHandle h, const char* name) { return dlsym(h, name); }
void lib_close(LibHandle h) { dlclose(h); }
std::string module_path_of(const void* addr) {
    Dl_info info{};
    if (!dladdr(addr, &info) || !info.dli_fname) return {};
    return info.dli_fname;
}
#endif

// The kernel must grant a process AMX tile data before it may use it (Linux: arch_prctl);
// a VM can report AMX in CPUID and still refuse.
bool os_grants_amx() {
#if defined(__linux__) && defined(__x86_64__)
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return true;
#endif
}

// AVX-512 registers are usable only where the OS saves their state (XCR0 bits 5-7 with 1-2).
bool os_saves_avx512() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(1), "c"(0));
    if (!(ecx & (1u << 27))) return false;  // no OSXSAVE: xgetbv is not available
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xE6u) == 0xE6u;
#else
    return true;
#endif
}

// "libggml-cpu-haswell.so" -> "ggml-cpu-haswell"; "" for files that are not ggml modules.
std::string module_stem(const std::string& file) {
    std::string s = file;
    if (s.rfind("lib", 0) == 0) s = s.substr(3);
    if (s.rfind("ggml-", 0) != 0) return {};
    for (const char* ext : {".so", ".dylib", ".dll"}) {
        const size_t n = std::strlen(ext);
        if (s.size() > n && s.compare(s.size() - n, n, ext) == 0) return s.substr(0, s.size() - n);
    }
    return {};
}

std::string features_of(ggml_backend_reg_t reg) {
    auto get = reinterpret_cast<ggml_backend_get_features_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features"));
    std::string out;
    if (!get) return out;
    for (ggml_backend_feature* f = get(reg); f && f->name; ++f) {
        if (std::strcmp(f->value, "1") == 0) out += (out.empty() ? "" : ",") + std::string(f->name);
        else out += (out.empty() ? "" : ",") + std::string(f->name) + "=" + f->value;
    }
    return out;
}

bool has_feature(const std::string& list, const std::string& prefix) {
    size_t at = 0;
    while (at <= list.size()) {
        const size_t end = std::min(list.find(',', at), list.size());
        if (list.compare(at, prefix.size(), prefix) == 0) return true;
        at = end + 1;
    }
    return false;
}

void load_cpu_variant(const std::vector<std::filesystem::path>& cpu_files) {
    LoadedGgml& l = loaded_ggml();
    const char* forced = std::getenv("STATEKV_CPU_VARIANT");
    struct Candidate {
        std::filesystem::path path;
        std::string variant;
        int score;
    };
    std::vector<Candidate> candidates;
    std::string available;
    for (const auto& p : cpu_files) {
        const std::string stem = module_stem(p.filename().string());
        const std::string variant = stem.size() > 9 ? stem.substr(9) : "";  // after "ggml-cpu-"
        LibHandle h = lib_open(p.string());
        if (!h) continue;
        auto score_fn = reinterpret_cast<int (*)()>(lib_sym(h, "ggml_backend_score"));
        // A module without a score function is a single-variant build: it runs anywhere it loads.
        const int score = score_fn ? score_fn() : 1;
        lib_close(h);
        if (score <= 0) continue;
        available += (available.empty() ? "" : ", ") + (variant.empty() ? std::string("ggml-cpu") : variant);
        if (forced && *forced && variant != forced) continue;
        candidates.push_back({p, variant, score});
    }
    if (forced && *forced && candidates.empty())
        throw ModelError(std::string("STATEKV_CPU_VARIANT=") + forced +
                         ": no such CPU variant runs on this machine; available: " + available);
    std::stable_sort(candidates.begin(), candidates.end(),
                     [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
    for (const Candidate& c : candidates) {
        ggml_backend_reg_t reg = ggml_backend_load(c.path.string().c_str());
        if (!reg) continue;
        const std::string feats = features_of(reg);
        std::string refused;
        if (has_feature(feats, "AMX") && !os_grants_amx()) refused = "the OS does not grant AMX tile state";
        else if (has_feature(feats, "AVX512") && !os_saves_avx512()) refused = "the OS does not save AVX-512 state";
        if (!refused.empty()) {
            l.notes += (l.notes.empty() ? "" : "; ") + c.variant + " skipped: " + refused;
            ggml_backend_unload(reg);
            continue;
        }
        l.cpu_variant = c.variant;
        l.cpu_module = c.path.string();
        l.cpu_features = feats;
        return;
    }
}

// ggml's own log: warnings and errors go to stderr; its informational lines (which module it
// loaded, buffer sizes) only with STATEKV_GGML_LOG=1, since ggml_info() reports the same.
void ggml_log_to_stderr(enum ggml_log_level level, const char* text, void*) {
    static const bool verbose = [] {
        const char* v = std::getenv("STATEKV_GGML_LOG");
        return v && *v && std::strcmp(v, "0") != 0;
    }();
    static enum ggml_log_level last = GGML_LOG_LEVEL_INFO;
    if (level == GGML_LOG_LEVEL_CONT) level = last;  // a continuation keeps its line's level
    last = level;
    if (verbose || level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

void load_backends_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        ggml_log_set(ggml_log_to_stderr, nullptr);
        LoadedGgml& l = loaded_ggml();
        l.library = module_path_of(reinterpret_cast<const void*>(&ggml_init));
        if (ggml_backend_dev_count() > 0) return;  // backends linked in (not a GGML_BACKEND_DL build)
        std::vector<std::filesystem::path> cpu_files, other_files;
        std::error_code ec;
        const std::filesystem::path dir = std::filesystem::path(l.library).parent_path();
        for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
            const std::string stem = module_stem(entry.path().filename().string());
            if (stem.empty() || stem == "ggml-base") continue;
            if (stem == "ggml-cpu" || stem.rfind("ggml-cpu-", 0) == 0) cpu_files.push_back(entry.path());
            else other_files.push_back(entry.path());
        }
        std::sort(cpu_files.begin(), cpu_files.end());
        std::sort(other_files.begin(), other_files.end());
        load_cpu_variant(cpu_files);
        for (const auto& p : other_files) {
            ggml_backend_load(p.string().c_str());  // a GPU backend without its driver just fails to load
        }
        // Nothing beside libggml (an unusual install): ggml's own search paths.
        if (ggml_backend_dev_count() == 0) ggml_backend_load_all();
        for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
            ggml_backend_reg_t reg = ggml_backend_reg_get(i);
            if (std::strcmp(ggml_backend_reg_name(reg), "CPU") == 0 && l.cpu_features.empty())
                l.cpu_features = features_of(reg);
        }
    });
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

std::map<std::string, std::string> ggml_info() {
    load_backends_once();
    const LoadedGgml& l = loaded_ggml();
    std::string modules;
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i)
        modules += (modules.empty() ? "" : ",") + std::string(ggml_backend_reg_name(ggml_backend_reg_get(i)));
    std::map<std::string, std::string> out{
        {"version", ggml_version()},
        {"library", l.library},
        {"origin", STATEKV_GGML_ORIGIN},
        {"cpu_variant", l.cpu_variant},
        {"cpu_module", l.cpu_module},
        {"cpu_features", l.cpu_features},
        {"modules", modules},
        {"packed_gemm_lanes", std::to_string(packed_matmul_lanes())},
    };
    if (!l.notes.empty()) out["cpu_notes"] = l.notes;
    return out;
}

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
    packed_matmul_lanes();  // a bad STATEKV_GEMM_LANES is refused here, before any graph is built
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
