# How statekv finds ggml. Nothing is vendored.
#
# Default: the prebuilt ggml of the `libggml-python` package (a build requirement in
# pyproject.toml). Its Linux wheel keeps the CMake package under lib64/cmake/ggml and the
# rpath it exports does not point at the wheel's own lib dir, so we ask the Python that runs
# the build where the package is, point ggml_DIR there, and later give our extension an rpath
# to the installed library folder (see STATEKV_GGML_RPATH).
#
# Alternative: -DSTATEKV_GGML_SOURCE=<path to a ggml or llama.cpp/ggml source tree> builds ggml
# from that tree (for CUDA / Metal / Vulkan: add -DGGML_CUDA=ON etc.). The resulting ggml
# libraries are installed next to the extension.

set(STATEKV_GGML_SOURCE "" CACHE PATH "Build ggml from this source tree instead of libggml-python")

if(STATEKV_GGML_SOURCE)
  if(NOT EXISTS "${STATEKV_GGML_SOURCE}/CMakeLists.txt")
    message(FATAL_ERROR "STATEKV_GGML_SOURCE=${STATEKV_GGML_SOURCE} has no CMakeLists.txt")
  endif()
  set(GGML_BUILD_TESTS OFF CACHE BOOL "" FORCE)
  set(GGML_BUILD_EXAMPLES OFF CACHE BOOL "" FORCE)
  set(BUILD_SHARED_LIBS ON CACHE BOOL "" FORCE)
  add_subdirectory("${STATEKV_GGML_SOURCE}" ggml-build EXCLUDE_FROM_ALL)
  set(STATEKV_GGML_TARGETS ggml ggml-base)
  set(STATEKV_GGML_RPATH "$ORIGIN")
  set(STATEKV_GGML_BUNDLE ON)
else()
  if(NOT Python_EXECUTABLE)
    find_package(Python COMPONENTS Interpreter REQUIRED)
  endif()
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import libggml, os; print(os.path.dirname(libggml.__file__))"
    OUTPUT_VARIABLE _libggml_root OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _libggml_rc)
  if(NOT _libggml_rc EQUAL 0 OR NOT _libggml_root)
    message(FATAL_ERROR "statekv: cannot import libggml with ${Python_EXECUTABLE}; "
                        "install libggml-python==0.20.2.post1 or pass -DSTATEKV_GGML_SOURCE=<dir>")
  endif()
  set(_ggml_dir "")
  foreach(_libdir lib64 lib)
    if(EXISTS "${_libggml_root}/${_libdir}/cmake/ggml/ggml-config.cmake")
      set(_ggml_dir "${_libggml_root}/${_libdir}/cmake/ggml")
      set(STATEKV_GGML_LIBDIR_NAME "${_libdir}")
      break()
    endif()
  endforeach()
  if(NOT _ggml_dir)
    message(FATAL_ERROR "statekv: no ggml CMake package under ${_libggml_root}/lib64 or /lib")
  endif()
  set(ggml_DIR "${_ggml_dir}" CACHE PATH "" FORCE)
  find_package(ggml REQUIRED CONFIG)
  set(STATEKV_GGML_TARGETS ggml::ggml ggml::ggml-base)
  # Installed layout: site-packages/statekv/_core*.so next to site-packages/libggml/<libdir>/.
  if(APPLE)
    set(STATEKV_GGML_RPATH "@loader_path/../libggml/${STATEKV_GGML_LIBDIR_NAME}")
  else()
    set(STATEKV_GGML_RPATH "$ORIGIN/../libggml/${STATEKV_GGML_LIBDIR_NAME}")
  endif()
  # For binaries run from the build tree (C++ tests) the absolute folder works.
  set(STATEKV_GGML_BUILD_RPATH "${_libggml_root}/${STATEKV_GGML_LIBDIR_NAME}")
  set(STATEKV_GGML_BUNDLE OFF)
  message(STATUS "statekv: ggml from libggml-python at ${_libggml_root}")
endif()
