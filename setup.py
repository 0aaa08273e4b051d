"""Build gpunet: the Python package plus the CUDA extension gpunet._C,
compiled by nvcc through CMake (CMakeLists.txt) only where it can run or
where it is asked for:

  GPUNET_CUDA_ARCHS set        gpunet._C for those architectures, in CMake's
                               syntax ("80-real;90": sm_80 and sm_90 SASS plus
                               compute_90 PTX, what CI builds); nvcc required
  else a GPU visible           gpunet._C for that GPU's architecture only, plus
                               PTX (nvidia-smi's compute capability), as
                               PyTorch's extension builder does
  else                         no gpunet._C; the install says so in one line
  GPUNET_SKIP_CUDA=1           no gpunet._C in any case

The sim backend's modules (gpunet._C_sim, gpunet._C_simcheck) are not built
here: they compile on first use into a per-user cache (gpunet/simbuild.py).

Works for `pip install .` and `pip install -e .` (and `python setup.py
build_ext --inplace`). The CMake build tree is build/cmake-<python>, kept
between builds; with pip's default build isolation the compiler sees a fresh
pybind11 path each time and recompiles everything, so for fast rebuilds use
`pip install -e . --no-build-isolation` (needs pybind11 and cmake installed).

Environment, besides the above:
  CMAKE_BUILD_PARALLEL_LEVEL   parallel compile jobs (default: the number of CPUs)
  CMAKE_GENERATOR              e.g. Ninja (read by CMake itself)
  CUDACXX                      the nvcc to use (default: nvcc on PATH, then CUDA_HOME, CUDA_PATH, /usr/local/cuda)
  CUDA_VISIBLE_DEVICES         "" or -1 hides the GPUs from the build too
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CUDA_EXT = "gpunet._C"
SIM_MODULES = ("gpunet._C_sim", "gpunet._C_simcheck")  # compiled on first use now (gpunet/simbuild.py)
DEFAULT_CUDA_HOME = "/usr/local/cuda"
ASK = 'set GPUNET_CUDA_ARCHS (e.g. "80-real;90") to build it'


class CMakeExtension(Extension):
    """An extension module built by CMake; its CMake target is the last part of its name."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])
        self.target = name.rsplit(".", 1)[-1]


class CudaPlan(NamedTuple):
    nvcc: str | None      # None: gpunet._C is not built
    archs: str | None     # CMAKE_CUDA_ARCHITECTURES
    message: str          # the one line the build prints


def find_nvcc(environ=os.environ):
    candidates = [environ.get("CUDACXX"), shutil.which("nvcc", path=environ.get("PATH", os.defpath))]
    candidates += [str(Path(home) / "bin" / "nvcc") for home in
                   (environ.get("CUDA_HOME"), environ.get("CUDA_PATH"), DEFAULT_CUDA_HOME) if home]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def query_compute_caps(environ=os.environ) -> str:
    """nvidia-smi's compute capabilities of the GPUs this build can see, one a line ("" for none)."""
    if environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return ""
    smi = shutil.which("nvidia-smi", path=environ.get("PATH", os.defpath))
    if smi is None:
        return ""
    try:
        proc = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def parse_compute_caps(text: str) -> list[str]:
    """["86", "90"] from nvidia-smi lines such as "9.0" and "8.6" (sorted,
    without repeats; lines that are not a capability are ignored)."""
    caps = set()
    for line in text.splitlines():
        major, dot, minor = line.strip().partition(".")
        if dot and major.isdigit() and minor.isdigit():
            caps.add((int(major), int(minor)))
    return [f"{major}{minor}" for major, minor in sorted(caps)]


def archs_for(caps: list[str]) -> str:
    """CMAKE_CUDA_ARCHITECTURES for these GPUs: SASS for each, PTX of the
    newest too (JIT-compiled by the driver for a newer GPU)."""
    return ";".join([f"{c}-real" for c in caps[:-1]] + caps[-1:])


def cuda_plan(environ=os.environ, compute_caps=None) -> CudaPlan:
    """Whether and how gpunet._C is built (see the top of this file);
    compute_caps(environ) stands in for query_compute_caps in tests."""
    if environ.get("GPUNET_SKIP_CUDA", "0") not in ("", "0"):
        return CudaPlan(None, None, "gpunet: GPUNET_SKIP_CUDA is set, gpunet._C (the CUDA kernels) skipped")
    nvcc = find_nvcc(environ)
    asked = environ.get("GPUNET_CUDA_ARCHS", "").strip()
    if asked:
        if nvcc is None:
            raise RuntimeError("gpunet: GPUNET_CUDA_ARCHS asks for gpunet._C but nvcc is not found (CUDACXX, PATH, "
                               f"CUDA_HOME, CUDA_PATH, {DEFAULT_CUDA_HOME}); unset it to install without gpunet._C")
        return CudaPlan(nvcc, asked, f"gpunet: building gpunet._C for CUDA architectures {asked} (GPUNET_CUDA_ARCHS)")
    caps = parse_compute_caps((compute_caps or query_compute_caps)(environ))
    if not caps:
        return CudaPlan(None, None, f"gpunet: no GPU visible, gpunet._C (the CUDA kernels) skipped; {ASK} anyway")
    gpus = ", ".join(f"sm_{c}" for c in caps)
    if nvcc is None:
        return CudaPlan(None, None, f"gpunet: a GPU is visible ({gpus}) but nvcc is not found, gpunet._C skipped "
                                    "(the cupy backend still uses the GPU); put nvcc on PATH or set CUDACXX")
    archs = archs_for(caps)
    return CudaPlan(nvcc, archs, f"gpunet: building gpunet._C for the visible GPU ({gpus}): CUDA architectures "
                                 f"{archs}; GPUNET_CUDA_ARCHS overrides")


def cmake_config(plan: CudaPlan, debug: bool, out_dir: Path) -> list[str]:
    """The CMake cache settings of the gpunet._C build."""
    import pybind11

    return [f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={'Debug' if debug else 'Release'}", f"-DGPUNET_OUTPUT_DIR={out_dir}",
            "-DGPUNET_BUILD_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={plan.nvcc}",
            f"-DCMAKE_CUDA_ARCHITECTURES={plan.archs}"]


class CMakeBuild(build_ext):
    """Configure and build gpunet._C with CMake when the plan says so, then
    copy it where setuptools expects it (setuptools copies it into gpunet/
    itself for editable and --inplace builds)."""

    def finalize_options(self):
        super().finalize_options()
        self.plan = cuda_plan()
        if self.plan.nvcc is None:
            self.extensions = [e for e in self.extensions if e.name != CUDA_EXT]

    @staticmethod
    def say(msg: str):
        # stderr: pip shows it with -v; distutils' announce() is often silenced
        print(msg, file=sys.stderr, flush=True)

    def run(self):
        self.say(self.plan.message)
        # A module from an earlier build must not be installed (build_lib) or
        # imported (editable/--inplace) in place of one this build skips; the
        # sim modules of older installs would hide the cache's fresh ones.
        stale = [CUDA_EXT] if self.plan.nvcc is None else []
        paths = [Path(self.build_lib) / self.get_ext_filename(name) for name in stale]
        if self.inplace:
            paths += [ROOT / self.get_ext_filename(name) for name in stale + list(SIM_MODULES)]
        for path in paths:
            if path.exists():
                self.say(f"gpunet: removing stale {path}")
                path.unlink()
        super().run()

    def build_extension(self, ext):
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}"
        out_dir = build_dir / "lib"
        self.run_cmake(build_dir, out_dir, ext.target)
        built = out_dir / Path(self.get_ext_filename(ext.name)).name
        if not built.is_file():
            raise RuntimeError(f"gpunet: CMake did not produce {built} for {ext.name}")
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(built), str(dest))

    def run_cmake(self, build_dir: Path, out_dir: Path, target: str):
        config = cmake_config(self.plan, self.debug, out_dir)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        build_dir.mkdir(parents=True, exist_ok=True)
        log_path = build_dir / "build.log"
        try:
            with open(log_path, "w") as log:
                self.run_logged(["cmake", "-S", str(ROOT), "-B", str(build_dir), *config], log)
                self.run_logged(["cmake", "--build", str(build_dir), "--target", target, "--parallel", jobs], log)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"gpunet: the CMake build failed ({e}); see the compiler output above or "
                               f"{log_path}. To install without the CUDA extension, set GPUNET_SKIP_CUDA=1.") from e
        self.say(f"gpunet: build log (with the ptxas register/spill report) in {log_path}")

    def run_logged(self, cmd, log):
        """Run `cmd`, echoing its output and keeping it in the build log: pip
        hides build output without -v, and the ptxas report is worth keeping."""
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sys.stderr.write(line)
            log.write(line)
        if proc.wait():
            raise subprocess.CalledProcessError(proc.returncode, cmd)


# pip's build backend (pyproject.toml: build-backend = "setup"): setuptools'
# own hooks, asking for CMake and pybind11 only where gpunet._C will be built,
# so that an install without a GPU downloads and compiles nothing.
from setuptools.build_meta import (build_editable, build_sdist, build_wheel,  # noqa: E402,F401
                                   get_requires_for_build_sdist, prepare_metadata_for_build_editable,
                                   prepare_metadata_for_build_wheel)
from setuptools import build_meta as _setuptools_backend  # noqa: E402

CMAKE_REQUIRES = ["cmake>=3.24", "pybind11>=2.12"]


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools_backend.get_requires_for_build_wheel(config_settings) + (
        CMAKE_REQUIRES if cuda_plan().nvcc else [])


def get_requires_for_build_editable(config_settings=None):
    return _setuptools_backend.get_requires_for_build_editable(config_settings) + (
        CMAKE_REQUIRES if cuda_plan().nvcc else [])


# Guarded so that tests and pip import this file for its functions; pip's
# setuptools hooks and `python setup.py` run it as __main__.
if __name__ == "__main__":
    setup(ext_modules=[CMakeExtension(CUDA_EXT)], cmdclass={"build_ext": CMakeBuild})
