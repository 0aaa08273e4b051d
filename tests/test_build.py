"""The build, without building: setup.py's decisions on the documented
switches (GPUNET_SKIP_CUDA, GPUNET_CUDA_ARCHS, where nvcc comes from) as
functions, the AddressSanitizer sim build (GPUNET_SIM_ASAN) as a
configure-only CMake run, so the suite stays fast, and the one-name-per-family
layout of the sources."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("gpunet_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines, does not build: setup() runs only as __main__
    return module


@pytest.fixture
def fake_nvcc(tmp_path):
    path = tmp_path / "cuda" / "bin" / "nvcc"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def no_default_cuda(setup_py, tmp_path, monkeypatch):
    """As on a machine without /usr/local/cuda."""
    monkeypatch.setattr(setup_py, "DEFAULT_CUDA_HOME", str(tmp_path / "absent"))


@pytest.mark.parametrize("value", ["1", "yes", "ON"])
def test_skip_cuda_wins_over_a_present_nvcc(setup_py, fake_nvcc, value):
    env = {"GPUNET_SKIP_CUDA": value, "CUDACXX": str(fake_nvcc)}
    assert setup_py.cuda_plan(env) == (None, "GPUNET_SKIP_CUDA is set")


@pytest.mark.parametrize("value", ["0", ""])
def test_skip_cuda_off_builds_with_the_nvcc_found(setup_py, fake_nvcc, value):
    env = {"GPUNET_SKIP_CUDA": value, "CUDACXX": str(fake_nvcc)}
    assert setup_py.cuda_plan(env) == (str(fake_nvcc), None)


def test_nvcc_is_looked_up_in_order(setup_py, fake_nvcc, tmp_path, no_default_cuda):
    home = str(fake_nvcc.parent.parent)
    assert setup_py.cuda_plan({"PATH": str(fake_nvcc.parent)}) == (str(fake_nvcc), None)
    assert setup_py.cuda_plan({"PATH": "", "CUDA_HOME": home}) == (str(fake_nvcc), None)
    assert setup_py.cuda_plan({"PATH": "", "CUDA_PATH": home}) == (str(fake_nvcc), None)
    assert setup_py.cuda_plan({"PATH": "", "CUDACXX": str(tmp_path / "missing")}) == (None, "nvcc not found")


def test_no_nvcc_builds_the_sim_module_only(setup_py, tmp_path, no_default_cuda):
    nvcc, why = setup_py.cuda_plan({"PATH": str(tmp_path)})
    assert (nvcc, why) == (None, "nvcc not found")
    config = setup_py.cmake_config(nvcc, False, tmp_path, {"GPUNET_CUDA_ARCHS": "90"})
    assert "-DGPUNET_BUILD_CUDA=OFF" in config
    assert not any(c.startswith(("-DCMAKE_CUDA_ARCHITECTURES", "-DCMAKE_CUDA_COMPILER")) for c in config)


def test_cuda_archs(setup_py, fake_nvcc, tmp_path):
    """GPUNET_CUDA_ARCHS sets CMAKE_CUDA_ARCHITECTURES; unset or empty, the
    default (sm_80 and sm_90 SASS, compute_90 PTX) is passed explicitly, the
    same as CMakeLists.txt's own default."""
    def archs(env):
        config = setup_py.cmake_config(str(fake_nvcc), False, tmp_path, env)
        assert "-DGPUNET_BUILD_CUDA=ON" in config and f"-DCMAKE_CUDA_COMPILER={fake_nvcc}" in config
        (arch,) = [c.split("=", 1)[1] for c in config if c.startswith("-DCMAKE_CUDA_ARCHITECTURES=")]
        return arch
    assert archs({"GPUNET_CUDA_ARCHS": "90"}) == "90"
    assert archs({"GPUNET_CUDA_ARCHS": "80;86;90a"}) == "80;86;90a"
    assert archs({}) == archs({"GPUNET_CUDA_ARCHS": ""}) == setup_py.DEFAULT_CUDA_ARCHS == "80-real;90"
    cmake_default = re.search(r'set\(CMAKE_CUDA_ARCHITECTURES "([^"]+)"\)', (ROOT / "CMakeLists.txt").read_text())
    assert cmake_default and cmake_default.group(1) == setup_py.DEFAULT_CUDA_ARCHS


def test_build_ext_drops_the_cuda_module_when_skipped(setup_py, monkeypatch):
    from setuptools import Distribution

    def planned(env_value):
        monkeypatch.setenv("GPUNET_SKIP_CUDA", env_value)
        dist = Distribution({"name": "gpunet", "ext_modules": [setup_py.CMakeExtension("gpunet._C_sim"),
                                                               setup_py.CMakeExtension("gpunet._C")]})
        cmd = setup_py.CMakeBuild(dist)
        cmd.ensure_finalized()
        return [e.name for e in cmd.extensions], cmd.skip_reason
    assert planned("1") == (["gpunet._C_sim"], "GPUNET_SKIP_CUDA is set")
    names, why = planned("0")
    assert names == (["gpunet._C_sim", "gpunet._C"] if why is None else ["gpunet._C_sim"])


def test_asan_sim_build_configures_sanitizers(tmp_path):
    """-DGPUNET_SIM_ASAN=ON (csrc/sim/README.md) compiles and links
    gpunet._C_sim and its kernels with AddressSanitizer and UBSan: checked on
    the generated build files, without compiling."""
    # the test extra installs cmake beside this Python, which need not be on PATH
    cmake = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if cmake is None:
        pytest.skip("cmake is not installed (pip install cmake)")
    try:
        import pybind11
    except ImportError:
        pytest.skip("pybind11 is not installed (pip install pybind11)")
    build = tmp_path / "build"
    proc = subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(build), "-G", "Unix Makefiles", "-DGPUNET_BUILD_CUDA=OFF",
         "-DGPUNET_SIM_ASAN=ON", f"-DPython_EXECUTABLE={sys.executable}",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    targets = build / "CMakeFiles"
    for target in ("gpunet_kernels_sim", "_C_sim"):
        flags = (targets / f"{target}.dir" / "flags.make").read_text()
        assert "-fsanitize=address,undefined" in flags and "-fno-omit-frame-pointer" in flags, target
    assert "-fsanitize=address,undefined" in (targets / "_C_sim.dir" / "link.txt").read_text()


def test_each_kernel_family_has_one_name_in_every_layer():
    """csrc/kernels/<family>.cu, csrc/bindings/<family>.cpp, its bind_<family>
    in the family list, gpunet/ops/<family>.py and tests/test_<family>.py; a
    family of TEST-ONLY kernels (said in its first line) has no ops module."""
    kernels = {p.stem for p in (ROOT / "csrc" / "kernels").glob("*.cu")}
    assert kernels == {p.stem for p in (ROOT / "csrc" / "kernels").glob("*.h")}
    assert kernels == {p.stem for p in (ROOT / "csrc" / "bindings").glob("*.cpp")}
    listed = re.search(r"#define GPUNET_FAMILIES\(X\)((?:.*\\\n)*.*)", (ROOT / "csrc/bindings/families.h").read_text())
    assert set(re.findall(r"X\((\w+)\)", listed.group(1))) == kernels
    for family in kernels:
        if "TEST-ONLY" in (ROOT / "csrc" / "kernels" / f"{family}.cu").read_text().splitlines()[0]:
            continue
        assert (ROOT / "gpunet" / "ops" / f"{family}.py").is_file(), family
        assert (ROOT / "tests" / f"test_{family}.py").is_file(), family
