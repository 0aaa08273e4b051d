"""The sim backend's extensions, compiled on first use into a per-user cache
(as CuPy and torch.utils.cpp_extension compile theirs), so that installing
gpunet compiles no simulator:

    gpunet._C_sim       the CUDA kernels compiled for the CPU (csrc/sim)
    gpunet._C_simcheck  the same under the race checker (GPUNET_SIM_RACECHECK=1)

The first `import gpunet._C_sim` (the first use of the `sim` backend) runs
CMake on the source checkout the package sits in (csrc/ and CMakeLists.txt
beside gpunet/) and prints one line saying so; later imports load the cached
module. The cache folder is GPUNET_CACHE_DIR, else $XDG_CACHE_HOME/gpunet,
else ~/.cache/gpunet; each source checkout, compiler and Python has its own
CMake build tree there, so a rebuild recompiles only what changed. A module
is rebuilt when the hash of the sources and the compiler's version differ
from those it was built from, and only then. A file lock makes concurrent
processes wait for one build. The C++ compiler is CMake's choice (CXX, else
c++ on PATH); the parallel jobs CMAKE_BUILD_PARALLEL_LEVEL, else every CPU.

A module inside the package folder (built by hand with
`-DGPUNET_OUTPUT_DIR=gpunet`) is found by the import system first and used
as it is.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

MODULES = {"gpunet._C_sim": "_C_sim", "gpunet._C_simcheck": "_C_simcheck"}
SOURCE_ROOT = Path(__file__).resolve().parent.parent
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def cache_dir(environ=os.environ) -> Path:
    if environ.get("GPUNET_CACHE_DIR"):
        return Path(environ["GPUNET_CACHE_DIR"])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpunet"


def compiler(environ=os.environ) -> tuple[str, str]:
    """(path, first line of --version) of the C++ compiler CMake will pick."""
    name = environ.get("CXX") or "c++"
    path = shutil.which(name, path=environ.get("PATH", os.defpath))
    if path is None:
        raise ImportError(f"gpunet: the sim backend compiles gpunet._C_sim on first use and needs a C++20 compiler, "
                          f"but {name!r} ({'CXX' if environ.get('CXX') else 'the default'}) is not found; "
                          "install g++ or clang++, or set CXX")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ImportError(f"gpunet: the C++ compiler {path} does not run ({e})") from e
    return path, (out.splitlines() or ["unknown version"])[0]


def source_files(root: Path) -> list[Path]:
    return sorted([root / "CMakeLists.txt", *(p for p in (root / "csrc").rglob("*") if p.is_file())])


def source_hash(root: Path, compiler_id: tuple[str, str]) -> str:
    """What a built module depends on: every source's path and content, the
    compiler and the Python it is built for."""
    h = hashlib.sha256("\0".join([*compiler_id, sys.version, EXT_SUFFIX]).encode())
    for path in source_files(root):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def build_tree(root: Path, compiler_id: tuple[str, str], environ=os.environ) -> Path:
    """The CMake build tree of this checkout, compiler and Python in the cache."""
    key = hashlib.sha256("\0".join([str(root), compiler_id[0], EXT_SUFFIX]).encode()).hexdigest()[:16]
    return cache_dir(environ) / "sim" / key


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cmake(environ) -> str:
    # pip installs cmake beside this Python, which need not be on PATH
    found = shutil.which("cmake", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                       environ.get("PATH", os.defpath)]))
    if found is None:
        raise ImportError("gpunet: the sim backend compiles gpunet._C_sim on first use and needs CMake >= 3.24 "
                          "(pip install cmake)")
    return found


def _pybind11_dir() -> str:
    try:
        import pybind11
    except ImportError as e:
        raise ImportError("gpunet: the sim backend compiles gpunet._C_sim on first use and needs pybind11 "
                          "(pip install pybind11)") from e
    return pybind11.get_cmake_dir()


def configure_command(root: Path, tree: Path, cxx: str, environ=os.environ) -> list[str]:
    # the generator is CMake's choice (CMAKE_GENERATOR, else Makefiles)
    return [_cmake(environ), "-S", str(root), "-B", str(tree), f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={_pybind11_dir()}", "-DCMAKE_BUILD_TYPE=Release", "-DGPUNET_BUILD_CUDA=OFF",
            f"-DCMAKE_CXX_COMPILER={cxx}", f"-DGPUNET_OUTPUT_DIR={tree / 'lib'}"]


class _Plan(NamedTuple):
    cxx: tuple[str, str]
    digest: str
    tree: Path
    module: Path
    stamp: Path

    def fresh(self) -> bool:
        return self.module.is_file() and self.stamp.is_file() and self.stamp.read_text() == self.digest


def _plan(target: str, root: Path, environ) -> _Plan:
    if not (root / "csrc").is_dir() or not (root / "CMakeLists.txt").is_file():
        raise ImportError(f"gpunet.{target} is not built and its sources are not beside the package ({root}); "
                          "the sim backend needs a source checkout installed with `pip install -e .`")
    cxx = compiler(environ)
    tree = build_tree(root, cxx, environ)
    return _Plan(cxx, source_hash(root, cxx), tree, tree / "lib" / f"{target}{EXT_SUFFIX}", tree / f"{target}.sources")


def probe(fullname: str, root: Path = SOURCE_ROOT, environ=os.environ,
          package_dir: Path = SOURCE_ROOT / "gpunet") -> tuple[bool, str]:
    """(available, how) for a sim module without compiling it: importable
    as built (the package folder, or fresh in the cache), or compilable on
    first use (the sources, a compiler, CMake and pybind11 are there)."""
    target = MODULES[fullname]
    try:
        plan = None
        if fullname not in sys.modules and importlib.machinery.PathFinder.find_spec(
                fullname, [str(package_dir)]) is None:
            plan = _plan(target, root, environ)
        if plan is None or plan.fresh():
            importlib.import_module(fullname)
            return True, "built"
        _cmake(environ)
        _pybind11_dir()
    except ImportError as e:
        return False, str(e)
    return True, f"compiled on first use with {plan.cxx[0]} into {plan.tree}"


def ensure_built(target: str, root: Path = SOURCE_ROOT, environ=os.environ, run=subprocess.run) -> Path:
    """The path of module `target` (_C_sim or _C_simcheck) built from the
    sources under `root`, compiling it first when they changed since."""
    cxx, digest, tree, module, stamp = plan = _plan(target, root, environ)
    tree.mkdir(parents=True, exist_ok=True)
    with _locked(tree / "lock"):
        if plan.fresh():
            return module
        jobs = environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        commands = [configure_command(root, tree, cxx[0], environ)] if not (tree / "CMakeCache.txt").is_file() else []
        commands.append([_cmake(environ), "--build", str(tree), "--target", target, "--parallel", jobs])
        print(f"gpunet: compiling gpunet.{target} for the sim backend with {cxx[0]} ({jobs} jobs) into {tree} "
              "(once per source change; minutes the first time)", file=sys.stderr, flush=True)
        log = tree / f"{target}.log"
        with open(log, "w") as out:
            for cmd in commands:
                if run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode:
                    tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
                    raise ImportError(f"gpunet: compiling gpunet.{target} with {cxx[0]} ({cxx[1]}) failed; "
                                      f"the end of {log}:\n{tail}")
        if not module.is_file():
            raise ImportError(f"gpunet: the CMake build did not produce {module} (see {log})")
        stamp.write_text(digest)
    return module


class _Finder:
    """Finds gpunet._C_sim and gpunet._C_simcheck in the cache, building them
    first; asked only after the package folder had none."""

    def __init__(self):
        self.failed: dict[str, ImportError] = {}  # a failed build is tried once per process

    def find_spec(self, fullname, path=None, target=None):
        name = MODULES.get(fullname)
        if name is None:
            return None
        if name not in self.failed:
            try:
                return importlib.util.spec_from_file_location(fullname, ensure_built(name))
            except ImportError as e:
                self.failed[name] = e
            except OSError as e:  # e.g. a cache folder that cannot be written
                self.failed[name] = ImportError(f"gpunet: cannot build gpunet.{name} in {cache_dir()} ({e}); "
                                                "set GPUNET_CACHE_DIR to a writable folder")
        raise self.failed[name]


class _Override:
    """GPUNET_SIM_MODULE=<file>: gpunet._C_sim is that build (a sanitizer
    build, tests/sanitize.sh), ahead of the package folder and the cache."""

    def find_spec(self, fullname, path=None, target=None):
        where = os.environ.get("GPUNET_SIM_MODULE")
        if fullname != "gpunet._C_sim" or not where:
            return None
        if not os.path.isfile(where):
            raise ImportError(f"gpunet: GPUNET_SIM_MODULE={where!r} is not a file (a built gpunet._C_sim)")
        return importlib.util.spec_from_file_location(fullname, where)


def install():
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Override())
        sys.meta_path.append(_Finder())
