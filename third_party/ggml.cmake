# How statekv gets ggml. Nothing is vendored: ggml is compiled from a source tree at build time.
#
# Default: the ggml tree inside a pinned sdist that PyPI serves, llama-cpp-python==0.3.36
# (`vendor/llama.cpp/ggml`, ggml 0.25.3, the same ggml as llama.cpp's peer build in
# docs/benchmarks.md). The sdist is fetched with pip (so a user's index and mirror settings
# apply), checked against its SHA-256 and cached under ~/.cache/statekv/src; pass
# -DSTATEKV_GGML_SDIST=<file.tar.gz> to use a copy you already have (offline builds).
#
# Alternative: -DSTATEKV_GGML_SOURCE=<a ggml checkout, or llama.cpp's ggml/ folder> for another
# ggml, and the GPU backends (-DGGML_CUDA=ON, -DGGML_VULKAN=ON, -DGGML_METAL=ON).
#
# Either way ggml is configured the way llama.cpp configures it, because a plain standalone ggml
# build is measurably slower on prompt and vision work (docs/performance.md):
# - GGML_LLAMAFILE=ON (llamafile's tinyBLAS kernels for batched mat-muls; llama.cpp's top-level
#   CMake turns it on, ggml's own default is off), GGML_CUDA_GRAPHS=ON likewise;
# - GGML_BACKEND_DL=ON + GGML_CPU_ALL_VARIANTS=ON: every CPU variant is a loadable module and
#   statekv loads the best one this CPU and OS can run (cpp/src/backend.cpp; an AMX variant only
#   where the kernel grants AMX tile state). GGML_NATIVE stays off: a native build on a CPU with
#   AMX inside a VM that refuses AMX tiles crashes in the AMX kernels.
# The libraries are installed next to the extension, which finds them through its RUNPATH.

set(STATEKV_GGML_SOURCE "" CACHE PATH "Build ggml from this source tree instead of the pinned sdist")
set(STATEKV_GGML_SDIST "" CACHE FILEPATH "llama-cpp-python==0.3.36 sdist to take ggml from (default: fetched with pip)")

set(_statekv_sdist_name "llama_cpp_python-0.3.36")
set(_statekv_sdist_sha256 "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")

function(statekv_fetch_ggml_sdist out_dir)
  if(NOT Python_EXECUTABLE)
    find_package(Python COMPONENTS Interpreter REQUIRED)
  endif()
  if(DEFINED ENV{XDG_CACHE_HOME} AND NOT "$ENV{XDG_CACHE_HOME}" STREQUAL "")
    set(_cache "$ENV{XDG_CACHE_HOME}/statekv/src")
  elseif(DEFINED ENV{HOME} AND NOT "$ENV{HOME}" STREQUAL "")
    set(_cache "$ENV{HOME}/.cache/statekv/src")
  elseif(DEFINED ENV{LOCALAPPDATA})
    set(_cache "$ENV{LOCALAPPDATA}/statekv/src")
  else()
    set(_cache "${CMAKE_BINARY_DIR}/_sdist")
  endif()
  set(_tarball "${STATEKV_GGML_SDIST}")
  if(NOT _tarball)
    set(_tarball "${_cache}/${_statekv_sdist_name}.tar.gz")
  endif()
  if(EXISTS "${_tarball}")
    file(SHA256 "${_tarball}" _have)
    if(NOT _have STREQUAL _statekv_sdist_sha256)
      if(STATEKV_GGML_SDIST)
        message(FATAL_ERROR "statekv: ${_tarball} has SHA-256 ${_have}, expected ${_statekv_sdist_sha256} "
                            "(the llama-cpp-python==0.3.36 sdist)")
      endif()
      file(REMOVE "${_tarball}")
    endif()
  endif()
  if(NOT EXISTS "${_tarball}")
    message(STATUS "statekv: fetching the ggml source (llama-cpp-python==0.3.36 sdist) with pip")
    file(MAKE_DIRECTORY "${_cache}")
    # --no-build-isolation: pip only reads the sdist's metadata, with the scikit-build-core this
    # build already has, instead of installing (and, with --no-binary, compiling) its build deps.
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -m pip download --quiet --no-deps --no-build-isolation
              --no-binary llama-cpp-python "llama-cpp-python==0.3.36" -d "${_cache}"
      RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
    if(NOT _rc EQUAL 0 OR NOT EXISTS "${_tarball}")
      message(FATAL_ERROR "statekv: could not fetch the ggml source with pip (${_rc}):\n${_out}${_err}\n"
                          "Download it yourself (pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36) "
                          "and pass -DSTATEKV_GGML_SDIST=<file>, or pass -DSTATEKV_GGML_SOURCE=<ggml tree>.")
    endif()
    file(SHA256 "${_tarball}" _have)
    if(NOT _have STREQUAL _statekv_sdist_sha256)
      file(REMOVE "${_tarball}")
      message(FATAL_ERROR "statekv: the fetched llama-cpp-python==0.3.36 sdist has SHA-256 ${_have}, "
                          "expected ${_statekv_sdist_sha256}")
    endif()
  endif()
  set(_dest "${CMAKE_BINARY_DIR}/_ggml_src")
  set(_tree "${_dest}/${_statekv_sdist_name}/vendor/llama.cpp/ggml")
  if(NOT EXISTS "${_tree}/CMakeLists.txt" OR "${_tarball}" IS_NEWER_THAN "${_tree}/CMakeLists.txt")
    file(REMOVE_RECURSE "${_dest}")
    file(ARCHIVE_EXTRACT INPUT "${_tarball}" DESTINATION "${_dest}"
         PATTERNS "${_statekv_sdist_name}/vendor/llama.cpp/ggml")
  endif()
  set(${out_dir} "${_tree}" PARENT_SCOPE)
endfunction()

if(STATEKV_GGML_SOURCE)
  if(NOT EXISTS "${STATEKV_GGML_SOURCE}/CMakeLists.txt")
    message(FATAL_ERROR "STATEKV_GGML_SOURCE=${STATEKV_GGML_SOURCE} has no CMakeLists.txt")
  endif()
  set(STATEKV_GGML_TREE "${STATEKV_GGML_SOURCE}")
  set(STATEKV_GGML_ORIGIN "source tree ${STATEKV_GGML_SOURCE}")
else()
  statekv_fetch_ggml_sdist(STATEKV_GGML_TREE)
  set(STATEKV_GGML_ORIGIN "llama-cpp-python==0.3.36 sdist (vendor/llama.cpp/ggml)")
endif()

# llama.cpp's choices (its top-level CMakeLists.txt changes these two ggml defaults).
set(GGML_LLAMAFILE ON CACHE BOOL "ggml: use llamafile's tinyBLAS kernels (llama.cpp's default)")
set(GGML_CUDA_GRAPHS ON CACHE BOOL "ggml: CUDA graphs (llama.cpp's default)")
set(GGML_BUILD_TESTS OFF CACHE BOOL "" FORCE)
set(GGML_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
set(BUILD_SHARED_LIBS ON CACHE BOOL "" FORCE)
# One build for every CPU: the variants are chosen at run time. ggml supports variants on these
# systems; elsewhere (e.g. Windows on ARM) it is a native build of the machine that compiles it.
set(_statekv_variants_default OFF)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i[3-6]86|x86)$")
  set(_statekv_variants_default ON)
elseif(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$" AND CMAKE_SYSTEM_NAME MATCHES "Linux|Darwin|Android")
  set(_statekv_variants_default ON)
endif()
set(GGML_BACKEND_DL ON CACHE BOOL "ggml: backends as loadable modules")
set(GGML_CPU_ALL_VARIANTS ${_statekv_variants_default} CACHE BOOL "ggml: every CPU variant, chosen at run time")
if(GGML_CPU_ALL_VARIANTS)
  set(GGML_NATIVE OFF CACHE BOOL "" FORCE)
endif()

# Which CPU variants to build (with GGML_CPU_ALL_VARIANTS). Each variant is a full compile of
# ggml's CPU backend, so all of x86's 14 cost about as much as the rest of the build together;
# the default keeps the ones that differ in what they run on current CPUs: a baseline, AVX2
# (haswell), AVX2 + AVX-VNNI (alderlake), AVX-512 (skylakex), AVX-512 + VNNI (cascadelake),
# AVX-512 + VBMI + VNNI (icelake), + BF16 (zen4) and AMX (sapphirerapids). A CPU between two
# of them runs the lower one. "all" builds every variant ggml defines.
set(STATEKV_CPU_VARIANTS "x64;haswell;alderlake;skylakex;cascadelake;icelake;zen4;sapphirerapids;armv8.0_1;armv8.2_2;armv8.6_1;armv9.2_1;apple_m1;apple_m2_m3;apple_m4"
    CACHE STRING "CPU variants to build (names of ggml's variants, or all)")
if(GGML_CPU_ALL_VARIANTS AND NOT STATEKV_CPU_VARIANTS STREQUAL "all")
  # ggml makes libggml depend on every variant module it defines, so every one would be
  # compiled; this wrapper drops the dependencies on the variants not asked for (they are
  # defined but, in an EXCLUDE_FROM_ALL tree that nothing else depends on, never built).
  function(add_dependencies target)
    set(_keep "")
    foreach(_dep ${ARGN})
      if(target STREQUAL "ggml" AND _dep MATCHES "^ggml-cpu-(.+)$")
        list(FIND STATEKV_CPU_VARIANTS "${CMAKE_MATCH_1}" _at)
        if(_at LESS 0)
          continue()
        endif()
      endif()
      list(APPEND _keep ${_dep})
    endforeach()
    if(_keep)
      _add_dependencies(${target} ${_keep})
    endif()
  endfunction()
endif()

add_subdirectory("${STATEKV_GGML_TREE}" ggml-build EXCLUDE_FROM_ALL)

set(STATEKV_GGML_TARGETS ggml ggml-base)
# Every backend module ggml defined (CPU variants, CUDA, Vulkan, ...): installed with the extension
# and loaded by backend.cpp from the extension's folder.
set(STATEKV_GGML_MODULES "")
foreach(_t ggml-cpu ggml-blas ggml-cuda ggml-hip ggml-musa ggml-metal ggml-vulkan ggml-sycl
           ggml-opencl ggml-cann ggml-rpc ggml-webgpu ggml-zdnn ggml-zendnn ggml-openvino)
  if(TARGET ${_t})
    list(APPEND STATEKV_GGML_MODULES ${_t})
  endif()
endforeach()
get_property(_statekv_ggml_src_targets DIRECTORY "${STATEKV_GGML_TREE}/src" PROPERTY BUILDSYSTEM_TARGETS)
foreach(_t IN LISTS _statekv_ggml_src_targets)
  if(_t MATCHES "^ggml-cpu-")
    get_target_property(_type ${_t} TYPE)
    string(SUBSTRING "${_t}" 9 -1 _variant)
    list(FIND STATEKV_CPU_VARIANTS "${_variant}" _at)
    if((_type STREQUAL "MODULE_LIBRARY" OR _type STREQUAL "SHARED_LIBRARY")
       AND (STATEKV_CPU_VARIANTS STREQUAL "all" OR _at GREATER -1))
      list(APPEND STATEKV_GGML_MODULES ${_t})
    endif()
  endif()
endforeach()
if(APPLE)
  set(STATEKV_GGML_RPATH "@loader_path")
else()
  set(STATEKV_GGML_RPATH "$ORIGIN")
endif()
set_target_properties(${STATEKV_GGML_TARGETS} ${STATEKV_GGML_MODULES} PROPERTIES
  INSTALL_RPATH "${STATEKV_GGML_RPATH}" BUILD_WITH_INSTALL_RPATH OFF)
# For binaries run from the build tree the libraries lie in ggml's output folders.
set(STATEKV_GGML_BUILD_RPATH "$<TARGET_FILE_DIR:ggml>;$<TARGET_FILE_DIR:ggml-base>")
message(STATUS "statekv: ggml from ${STATEKV_GGML_ORIGIN}; LLAMAFILE=${GGML_LLAMAFILE} "
               "BACKEND_DL=${GGML_BACKEND_DL} CPU_ALL_VARIANTS=${GGML_CPU_ALL_VARIANTS}; modules: ${STATEKV_GGML_MODULES}")
