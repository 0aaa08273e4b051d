"""Build gpunet: the Python package plus two extension modules made by CMake
(CMakeLists.txt):

  gpunet._C_sim  the CUDA kernels compiled for the CPU (csrc/sim); always built
  gpunet._C_simcheck  the same under the simulator's race checker; always built
  gpunet._C      the CUDA kernels compiled by nvcc; built when nvcc is found

Works for `pip install .` and `pip install -e .` (and `python setup.py
build_ext --inplace`). The CMake build tree is build/cmake-<python>, kept
between builds; with pip's default build isolation the compiler sees a fresh
pybind11 path each time and recompiles everything, so for fast rebuilds use
`pip install -e . --no-build-isolation` (needs pybind11 and cmake installed).

Environment:
  GPUNET_SKIP_CUDA=1           do not build gpunet._C
  GPUNET_CUDA_ARCHS="90"       CMAKE_CUDA_ARCHITECTURES for gpunet._C (default "80-real;90")
  CMAKE_BUILD_PARALLEL_LEVEL   parallel compile jobs (default: the number of CPUs)
  CMAKE_GENERATOR              e.g. Ninja (read by CMake itself)
  CUDACXX                      the nvcc to use (default: nvcc on PATH, then /usr/local/cuda/bin/nvcc)
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# sm_80 and sm_90 SASS plus compute_90 PTX; the same default as CMakeLists.txt,
# passed explicitly so that a value cached by an earlier build never lingers.
DEFAULT_CUDA_ARCHS = "80-real;90"
CUDA_EXT = "gpunet._C"


class CMakeExtension(Extension):
    """An extension module built by CMake; its CMake target is the last part of its name."""

    def __init__(self, name: str):
        super().__init__(name, sources=[])
        self.target = name.rsplit(".", 1)[-1]


DEFAULT_CUDA_HOME = "/usr/local/cuda"


def find_nvcc(environ=os.environ):
    candidates = [environ.get("CUDACXX"), shutil.which("nvcc", path=environ.get("PATH", os.defpath))]
    candidates += [str(Path(home) / "bin" / "nvcc") for home in
                   (environ.get("CUDA_HOME"), environ.get("CUDA_PATH"), DEFAULT_CUDA_HOME) if home]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def cuda_plan(environ=os.environ):
    """(nvcc, None) when gpunet._C is built with that nvcc, else (None, why
    not): GPUNET_SKIP_CUDA set to anything but "" or "0", or no nvcc found."""
    if environ.get("GPUNET_SKIP_CUDA", "0") not in ("", "0"):
        return None, "GPUNET_SKIP_CUDA is set"
    nvcc = find_nvcc(environ)
    return (nvcc, None) if nvcc else (None, "nvcc not found")


def cmake_config(nvcc, debug: bool, out_dir: Path, environ=os.environ) -> list[str]:
    """The CMake cache settings of a build (nvcc None: gpunet._C_sim only)."""
    import pybind11

    config = [
        f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DCMAKE_BUILD_TYPE={'Debug' if debug else 'Release'}",
        f"-DGPUNET_OUTPUT_DIR={out_dir}",
        f"-DGPUNET_BUILD_CUDA={'OFF' if nvcc is None else 'ON'}",
    ]
    if nvcc is not None:
        archs = environ.get("GPUNET_CUDA_ARCHS") or DEFAULT_CUDA_ARCHS
        config += [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}"]
    return config


class CMakeBuild(build_ext):
    """Configure and build every module with one CMake run, then copy each
    module where setuptools expects it (setuptools copies them into gpunet/
    itself for editable and --inplace builds)."""

    def finalize_options(self):
        super().finalize_options()
        self.nvcc, self.skip_reason = cuda_plan()
        if self.skip_reason:
            self.extensions = [e for e in self.extensions if e.name != CUDA_EXT]
        self.cmake_done = False

    @staticmethod
    def say(msg: str):
        # stderr: pip shows it with -v; distutils' announce() is often silenced
        print(msg, file=sys.stderr, flush=True)

    def run(self):
        if self.skip_reason:
            self.say(f"gpunet: {self.skip_reason}, CUDA extension gpunet._C skipped")
            # A module from an earlier build must not be installed (build_lib)
            # or imported (editable/--inplace) in place of the skipped one.
            stale = [Path(self.build_lib) / self.get_ext_filename(CUDA_EXT)]
            if self.inplace:
                stale.append(ROOT / self.get_ext_filename(CUDA_EXT))
            for path in stale:
                if path.exists():
                    self.say(f"gpunet: removing stale {path}")
                    path.unlink()
        super().run()

    def build_extension(self, ext):
        build_dir = ROOT / "build" / f"cmake-{sys.implementation.cache_tag}"
        out_dir = build_dir / "lib"
        if not self.cmake_done:
            self.run_cmake(build_dir, out_dir)
            self.cmake_done = True
        built = out_dir / Path(self.get_ext_filename(ext.name)).name
        if not built.is_file():
            raise RuntimeError(f"gpunet: CMake did not produce {built} for {ext.name}")
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(built), str(dest))

    def run_cmake(self, build_dir: Path, out_dir: Path):
        config = cmake_config(self.nvcc, self.debug, out_dir)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        build_dir.mkdir(parents=True, exist_ok=True)
        log_path = build_dir / "build.log"
        try:
            with open(log_path, "w") as log:
                self.run_logged(["cmake", "-S", str(ROOT), "-B", str(build_dir), *config], log)
                self.run_logged(["cmake", "--build", str(build_dir), "--parallel", jobs], log)
        except subprocess.CalledProcessError as e:
            hint = ("" if self.nvcc is None else
                    " To install without the CUDA extension, set GPUNET_SKIP_CUDA=1.")
            raise RuntimeError(f"gpunet: the CMake build failed ({e}); see the compiler output above "
                               f"or {log_path}.{hint}") from e
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


# Guarded so that tests can import this file for cuda_plan() and
# cmake_config(); pip and `python setup.py` run it as __main__.
if __name__ == "__main__":
    setup(
        ext_modules=[CMakeExtension("gpunet._C_sim"), CMakeExtension("gpunet._C_simcheck"), CMakeExtension(CUDA_EXT)],
        cmdclass={"build_ext": CMakeBuild},
    )
