"""The build, without building: setup.py's decisions on the documented
switches (GPUNET_SKIP_CUDA, GPUNET_CUDA_ARCHS, a visible GPU, where nvcc comes
from) as functions, the sim modules' compile-on-first-use cache
(gpunet/simbuild.py) with CMake replaced by a recorder, the AddressSanitizer sim build (GPUNET_SIM_ASAN) as a
configure-only CMake run, so the suite stays fast, and the one-name-per-family
layout of the sources."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
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


def no_gpu(environ):
    return ""


def h200(environ):
    return "9.0\n"


@pytest.mark.parametrize("value", ["1", "yes", "ON"])
def test_skip_cuda_wins_over_everything(setup_py, fake_nvcc, value):
    env = {"GPUNET_SKIP_CUDA": value, "CUDACXX": str(fake_nvcc), "GPUNET_CUDA_ARCHS": "90"}
    plan = setup_py.cuda_plan(env, h200)
    assert plan.nvcc is None and "GPUNET_SKIP_CUDA is set" in plan.message


def test_nvcc_is_looked_up_in_order(setup_py, fake_nvcc, tmp_path, no_default_cuda):
    home = str(fake_nvcc.parent.parent)
    assert setup_py.find_nvcc({"PATH": str(fake_nvcc.parent)}) == str(fake_nvcc)
    assert setup_py.find_nvcc({"PATH": "", "CUDA_HOME": home}) == str(fake_nvcc)
    assert setup_py.find_nvcc({"PATH": "", "CUDA_PATH": home}) == str(fake_nvcc)
    assert setup_py.find_nvcc({"PATH": "", "CUDACXX": str(tmp_path / "missing")}) is None


@pytest.mark.parametrize("skip", ["0", ""])
def test_no_gpu_no_cuda_module_unless_asked(setup_py, fake_nvcc, skip):
    """nvcc alone does not build gpunet._C where no GPU can run it; the one
    line says what was skipped and how to ask; GPUNET_CUDA_ARCHS asks."""
    env = {"CUDACXX": str(fake_nvcc), "GPUNET_SKIP_CUDA": skip}
    plan = setup_py.cuda_plan(env, no_gpu)
    assert plan.nvcc is None and plan.archs is None
    assert "no GPU visible" in plan.message and "GPUNET_CUDA_ARCHS" in plan.message and "\n" not in plan.message
    for archs in ("90", "80-real;90", "80;86;90a"):
        asked = setup_py.cuda_plan({**env, "GPUNET_CUDA_ARCHS": archs}, no_gpu)
        assert (asked.nvcc, asked.archs) == (str(fake_nvcc), archs)
        assert setup_py.cuda_plan({**env, "GPUNET_CUDA_ARCHS": archs}, h200).archs == archs  # the ask wins


def test_asking_without_nvcc_is_an_error(setup_py, tmp_path, no_default_cuda):
    with pytest.raises(RuntimeError, match="GPUNET_CUDA_ARCHS asks for gpunet._C but nvcc is not found"):
        setup_py.cuda_plan({"PATH": str(tmp_path), "GPUNET_CUDA_ARCHS": "90"}, no_gpu)


@pytest.mark.parametrize("smi, archs", [
    ("9.0\n", "90"), ("9.0\n9.0\n", "90"), ("8.6\n9.0\n8.0\n", "80-real;86-real;90"), ("10.0\n", "100"),
    (" 12.0 \n[N/A]\n", "120")])
def test_a_visible_gpu_builds_its_architecture_plus_ptx(setup_py, fake_nvcc, smi, archs):
    plan = setup_py.cuda_plan({"CUDACXX": str(fake_nvcc)}, lambda env: smi)
    assert (plan.nvcc, plan.archs) == (str(fake_nvcc), archs)


@pytest.mark.parametrize("text, caps", [
    ("", []), ("[N/A]\n", []), ("9.0", ["90"]), ("9.0\r\n8.9\n", ["89", "90"]), ("garbage\n7.5\n", ["75"]),
    ("9\n", []), ("9.x\n", [])])
def test_parse_compute_caps(setup_py, text, caps):
    assert setup_py.parse_compute_caps(text) == caps


def test_a_visible_gpu_without_nvcc_skips_and_says_so(setup_py, tmp_path, no_default_cuda):
    plan = setup_py.cuda_plan({"PATH": str(tmp_path)}, h200)
    assert plan.nvcc is None and "sm_90" in plan.message and "nvcc is not found" in plan.message


def test_gpu_query_asks_nvidia_smi_unless_gpus_are_hidden(setup_py, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=compute_cap" ] && echo 9.0\n')
    smi.chmod(0o755)
    assert setup_py.query_compute_caps({"PATH": str(tmp_path)}).split() == ["9.0"]
    for hidden in ("", "-1"):
        assert setup_py.query_compute_caps({"PATH": str(tmp_path), "CUDA_VISIBLE_DEVICES": hidden}) == ""
    assert setup_py.query_compute_caps({"PATH": str(tmp_path / "absent")}) == ""


def test_ci_asks_for_every_kernel_with_nvcc():
    """No GPU on CI, so .ci/run must ask for gpunet._C (sm_80 and sm_90)."""
    ci = (ROOT / ".ci" / "run").read_text()
    m = re.search(r'GPUNET_CUDA_ARCHS="([^"]+)"', ci)
    assert m and {"80", "90"} <= set(re.findall(r"\d+", m.group(1)))


def test_build_ext_drops_the_cuda_module_when_skipped(setup_py, monkeypatch):
    from setuptools import Distribution

    def planned(**env):
        for key in ("GPUNET_SKIP_CUDA", "GPUNET_CUDA_ARCHS", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        dist = Distribution({"name": "gpunet", "ext_modules": [setup_py.CMakeExtension("gpunet._C")]})
        cmd = setup_py.CMakeBuild(dist)
        cmd.ensure_finalized()
        return [e.name for e in cmd.extensions]
    assert planned(GPUNET_SKIP_CUDA="1") == []
    assert planned(CUDA_VISIBLE_DEVICES="") == []
    if setup_py.find_nvcc():
        assert planned(GPUNET_CUDA_ARCHS="90") == ["gpunet._C"]


def _configure(build, *options):
    """Configures a build folder without compiling (skips without cmake or
    pybind11); returns the CompletedProcess."""
    # the test extra installs cmake beside this Python, which need not be on PATH
    cmake = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if cmake is None:
        pytest.skip("cmake is not installed (pip install cmake)")
    try:
        import pybind11
    except ImportError:
        pytest.skip("pybind11 is not installed (pip install pybind11)")
    return subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(build), "-G", "Unix Makefiles", "-DGPUNET_BUILD_CUDA=OFF", *options,
         f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("option, kernel_flags, binding_flags, link_flag", [
    ("GPUNET_SIM_ASAN", ["-fsanitize=address", "-fsanitize=undefined"], ["-fsanitize=address"],
     "-fsanitize=address,undefined"),
    ("GPUNET_SIM_TSAN", ["-fsanitize=thread"], ["-fsanitize=thread"], "-fsanitize=thread")])
def test_sanitizer_sim_builds_configure(tmp_path, option, kernel_flags, binding_flags, link_flag):
    """-DGPUNET_SIM_ASAN=ON / -DGPUNET_SIM_TSAN=ON (csrc/sim/README.md,
    tests/sanitize.sh) compile and link gpunet._C_sim and its kernels with the
    sanitizer (UBSan on the kernels only), and leave out the race checker's
    module: checked on the generated build files, without compiling."""
    build = tmp_path / "build"
    proc = _configure(build, f"-D{option}=ON")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    targets = build / "CMakeFiles"
    for target, wanted in (("gpunet_kernels_sim", kernel_flags), ("_C_sim", binding_flags)):
        flags = (targets / f"{target}.dir" / "flags.make").read_text()
        assert all(flag in flags for flag in wanted) and "-fno-omit-frame-pointer" in flags, target
    assert "undefined" not in (targets / "_C_sim.dir" / "flags.make").read_text()
    assert link_flag in (targets / "_C_sim.dir" / "link.txt").read_text()
    assert not (targets / "_C_simcheck.dir").exists()


def test_asan_and_tsan_exclude_each_other(tmp_path):
    proc = _configure(tmp_path / "build", "-DGPUNET_SIM_ASAN=ON", "-DGPUNET_SIM_TSAN=ON")
    assert proc.returncode != 0 and "GPUNET_SIM_ASAN and GPUNET_SIM_TSAN exclude each other" in proc.stderr


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


# ---------------------------------------------------------------- the sim modules' cache
class FakeCMake:
    """Stands in for CMake: records each command; a configure writes the
    cache file, a build writes the module."""

    def __init__(self, returncode=0):
        self.commands, self.returncode = [], returncode

    def __call__(self, cmd, **kwargs):
        self.commands.append("configure" if "-S" in cmd else f"build {cmd[cmd.index('--target') + 1]}")
        tree = Path(cmd[cmd.index("-B" if "-S" in cmd else "--build") + 1])
        if self.returncode == 0:
            if "-S" in cmd:
                (tree / "CMakeCache.txt").write_text("")
            else:
                target = cmd[cmd.index("--target") + 1]
                (tree / "lib").mkdir(exist_ok=True)
                (tree / "lib" / f"{target}{simbuild.EXT_SUFFIX}").write_text("module")
        return subprocess.CompletedProcess(cmd, self.returncode)

    def take(self):
        done, self.commands = self.commands, []
        return done


@pytest.fixture
def sim_sources(tmp_path):
    root = tmp_path / "checkout"
    (root / "csrc" / "kernels").mkdir(parents=True)
    (root / "CMakeLists.txt").write_text("project(x)\n")
    (root / "csrc" / "kernels" / "a.cu").write_text("__global__ void a() {}\n")
    return root


@pytest.fixture
def sim_env(tmp_path):
    cxx = tmp_path / "bin" / "fake-c++"
    cxx.parent.mkdir()
    cxx.write_text("#!/bin/sh\necho 'fake c++ 1.0'\n")
    cxx.chmod(0o755)
    return {"GPUNET_CACHE_DIR": str(tmp_path / "cache"), "CXX": str(cxx), "PATH": os.environ.get("PATH", "")}


from gpunet import simbuild  # noqa: E402  (beside the tests that use it)


def test_sim_cache_rebuilds_when_a_source_changes_and_only_then(sim_sources, sim_env, capsys):
    cmake = FakeCMake()
    first = simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake)
    assert cmake.take() == ["configure", "build _C_sim"]
    assert first.is_relative_to(Path(sim_env["GPUNET_CACHE_DIR"])) and first.name == f"_C_sim{simbuild.EXT_SUFFIX}"
    (line,) = capsys.readouterr().err.splitlines()  # one line, naming the module and the compiler
    assert "compiling gpunet._C_sim" in line and sim_env["CXX"] in line
    assert simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake) == first and cmake.take() == []
    kernel = sim_sources / "csrc" / "kernels" / "a.cu"
    os.utime(kernel, (1, 1))  # a new time alone changes nothing
    assert simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake) == first and cmake.take() == []
    kernel.write_text("__global__ void a() { }\n")  # the same tree, built again, not configured again
    assert simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake) == first and cmake.take() == ["build _C_sim"]
    (sim_sources / "csrc" / "kernels" / "b.cu").write_text("")
    simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake)
    assert cmake.take() == ["build _C_sim"]
    simbuild.ensure_built("_C_simcheck", sim_sources, sim_env, cmake)  # each module has its own stamp
    assert cmake.take() == ["build _C_simcheck"]
    simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake)
    assert cmake.take() == []
    Path(sim_env["CXX"]).write_text("#!/bin/sh\necho 'fake c++ 2.0'\n")  # a new compiler version
    simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake)
    assert cmake.take() == ["build _C_sim"]


def test_sim_cache_is_per_checkout_and_folder_variable(sim_sources, sim_env, tmp_path):
    other = tmp_path / "other-checkout"
    shutil.copytree(sim_sources, other)
    cmake = FakeCMake()
    a = simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake)
    b = simbuild.ensure_built("_C_sim", other, sim_env, cmake)
    assert a.parent != b.parent and cmake.take() == ["configure", "build _C_sim"] * 2
    assert simbuild.cache_dir({"GPUNET_CACHE_DIR": "/x", "XDG_CACHE_HOME": "/y"}) == Path("/x")
    assert simbuild.cache_dir({"XDG_CACHE_HOME": "/y"}) == Path("/y/gpunet")


def test_sim_cache_build_errors_name_the_compiler(sim_sources, sim_env):
    cmake = FakeCMake(returncode=2)
    with pytest.raises(ImportError, match=r"compiling gpunet._C_sim with .*fake-c\+\+ \(fake c\+\+ 1.0\) failed"):
        simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake)
    cmake.returncode = 0  # a failed build leaves no stamp: the next use tries again
    simbuild.ensure_built("_C_sim", sim_sources, sim_env, cmake)
    assert cmake.take() == ["configure", "configure", "build _C_sim"]
    with pytest.raises(ImportError, match="'no-such-c\\+\\+' .*CXX.* is not found"):
        simbuild.ensure_built("_C_sim", sim_sources, {**sim_env, "CXX": "no-such-c++"}, cmake)
    with pytest.raises(ImportError, match="sources are not beside the package"):
        simbuild.ensure_built("_C_sim", sim_sources / "csrc", sim_env, cmake)


def test_build_backend_asks_for_cmake_only_when_the_cuda_module_is_built(setup_py, fake_nvcc, monkeypatch):
    """pyproject.toml's backend is setup.py: an install without a GPU needs
    neither CMake nor pybind11 in its build environment."""
    monkeypatch.setattr(setup_py, "query_compute_caps", no_gpu)
    monkeypatch.setenv("CUDACXX", str(fake_nvcc))
    for key in ("GPUNET_SKIP_CUDA", "GPUNET_CUDA_ARCHS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(ROOT)  # setuptools' hooks read setup.py from the current folder
    for hook in (setup_py.get_requires_for_build_wheel, setup_py.get_requires_for_build_editable):
        assert not any(r.startswith(("cmake", "pybind11")) for r in hook())
    monkeypatch.setenv("GPUNET_CUDA_ARCHS", "90")
    for hook in (setup_py.get_requires_for_build_wheel, setup_py.get_requires_for_build_editable):
        assert set(setup_py.CMAKE_REQUIRES) <= set(hook())
    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert system["build-backend"] == "setup" and not any(r.startswith(("cmake", "pybind11"))
                                                          for r in system["requires"])


def test_sim_finder_turns_build_problems_into_import_errors(monkeypatch, tmp_path):
    """The backend probe catches ImportError: an unwritable cache must not
    escape as another exception (gpunet.backends() would raise)."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setenv("GPUNET_CACHE_DIR", str(blocked / "cache"))  # below a file: mkdir fails
    finder = simbuild._Finder()
    for _ in range(2):  # the failure is remembered, not retried
        with pytest.raises(ImportError, match="GPUNET_CACHE_DIR"):
            finder.find_spec("gpunet._C_sim")
    assert finder.find_spec("gpunet._C") is None


def test_sim_probe_says_available_without_compiling(sim_sources, sim_env, tmp_path, monkeypatch):
    """gpunet.backends() asks this: listing the backends must not start a
    build of minutes; the first use of sim does."""
    monkeypatch.delitem(sys.modules, "gpunet._C_sim", raising=False)
    empty_package = tmp_path / "package"
    empty_package.mkdir()
    ok, how = simbuild.probe("gpunet._C_sim", sim_sources, sim_env, empty_package)
    assert ok and how.startswith(f"compiled on first use with {sim_env['CXX']}")
    assert not list(Path(sim_env["GPUNET_CACHE_DIR"]).rglob(f"*{simbuild.EXT_SUFFIX}"))
    ok, how = simbuild.probe("gpunet._C_sim", sim_sources, {**sim_env, "CXX": "no-such-c++"}, empty_package)
    assert not ok and "no-such-c++" in how
