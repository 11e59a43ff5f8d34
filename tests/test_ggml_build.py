"""The installed package runs the ggml it was built with, configured as llama.cpp configures it,
with the CPU variant that suits this machine (third_party/ggml.cmake, cpp/src/backend.cpp)."""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

import pytest

import statekv

PACKAGE_DIR = os.path.dirname(os.path.abspath(statekv.__file__))
X86_LINUX = sys.platform.startswith("linux") and platform.machine() in {"x86_64", "AMD64"}


def _cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def _info_in_subprocess(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    # The variant is chosen once per process, so each choice runs in a fresh interpreter.
    env = dict(os.environ, **env_extra)
    code = "import json, statekv; print(json.dumps(statekv.ggml_info()))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_package_loads_its_own_ggml():
    info = statekv.ggml_info()
    assert info["version"] == "0.25.3"
    assert os.path.dirname(os.path.abspath(info["library"])) == PACKAGE_DIR
    assert "llama-cpp-python==0.3.36" in info["origin"] or "source tree" in info["origin"]
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as f:
            mapped = {line.split()[-1] for line in f if "ggml" in line.split()[-1]}
        assert mapped, "no ggml library mapped"
        outside = [p for p in mapped if os.path.dirname(os.path.abspath(p)) != PACKAGE_DIR]
        assert not outside, f"a ggml from elsewhere is loaded: {outside}"


def test_ggml_is_built_with_llamafile_like_llama_cpp():
    assert "LLAMAFILE" in statekv.ggml_info()["cpu_features"].split(",")


@pytest.mark.skipif(not X86_LINUX, reason="CPU variants are checked against /proc/cpuinfo on x86-64 Linux")
def test_the_best_cpu_variant_for_this_machine_is_chosen():
    info = statekv.ggml_info()
    flags = _cpu_flags()
    feats = set(info["cpu_features"].split(","))
    assert info["cpu_module"].startswith(PACKAGE_DIR)
    if "avx512f" in flags:
        assert "AVX512" in feats, info
    elif "avx2" in flags and "fma" in flags:
        assert {"AVX2", "FMA"} <= feats and "AVX512" not in feats, info
        assert info["cpu_variant"] in {"haswell", "alderlake"}, info
    if "AMX_INT8" in feats:
        assert "amx_int8" in flags


@pytest.mark.skipif(not X86_LINUX, reason="x86 variant names")
def test_a_cpu_variant_can_be_forced_and_a_wrong_one_is_a_clear_error():
    r = _info_in_subprocess({"STATEKV_CPU_VARIANT": "x64"})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["cpu_variant"] == "x64" and "AVX2" not in info["cpu_features"].split(",")

    r = _info_in_subprocess({"STATEKV_CPU_VARIANT": "no-such-cpu"})
    assert r.returncode != 0
    assert "STATEKV_CPU_VARIANT=no-such-cpu" in r.stderr and "available:" in r.stderr and "x64" in r.stderr

    if "avx512f" not in _cpu_flags():
        # A variant this CPU cannot run is refused by its score, never executed (no SIGILL).
        r = _info_in_subprocess({"STATEKV_CPU_VARIANT": "skylakex"})
        assert r.returncode == 1 and "no such CPU variant runs on this machine" in r.stderr, r


def test_packed_gemm_width_follows_the_cpu_and_can_be_forced():
    """statekv's own F16/Q8_0 product runs 16-lane vectors where the CPU has AVX-512 (x86-64-v4),
    8 elsewhere; STATEKV_GEMM_LANES forces a width, and a wrong value is a clear error."""
    avx512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= _cpu_flags() if X86_LINUX else False
    r = _info_in_subprocess({"STATEKV_GEMM_LANES": ""})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["packed_gemm_lanes"] == ("16" if avx512 else "8")
    for lanes in ("8", "16"):
        r = _info_in_subprocess({"STATEKV_GEMM_LANES": lanes})
        assert r.returncode == 0 and json.loads(r.stdout)["packed_gemm_lanes"] == lanes, r.stderr
    r = _info_in_subprocess({"STATEKV_GEMM_LANES": "12"})
    assert r.returncode != 0 and "STATEKV_GEMM_LANES=12: expected 8 or 16" in r.stderr, r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("readelf") is None,
                    reason="ELF RUNPATH check")
def test_extension_and_ggml_find_each_other_through_runpath():
    libs = [f for f in os.listdir(PACKAGE_DIR) if f.startswith(("_core", "libggml")) and ".so" in f]
    assert any(f.startswith("_core") for f in libs) and any(f.startswith("libggml-base") for f in libs)
    for name in libs:
        if os.path.islink(os.path.join(PACKAGE_DIR, name)):
            continue
        dyn = subprocess.run(["readelf", "-d", os.path.join(PACKAGE_DIR, name)], capture_output=True, text=True).stdout
        if "NEEDED" in dyn and "libggml" in dyn:
            assert "$ORIGIN" in dyn, f"{name} needs ggml but has no $ORIGIN run path:\n{dyn}"


def test_cli_info_names_the_ggml_in_use(capsys):
    from statekv.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "ggml.version: 0.25.3" in out and "ggml.cpu_features:" in out and "LLAMAFILE" in out
