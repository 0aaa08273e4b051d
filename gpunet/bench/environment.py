"""What a result was measured on: versions, hardware, threads, math mode,
commit. Also the knobs that must be set before anything runs: equal thread
counts for NumPy's BLAS and PyTorch, TF32 off everywhere."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import numpy as np


def disable_tf32():
    """float32 GEMMs in true float32: CuPy reads CUPY_TF32 when it creates its
    cuBLAS handle, so this runs before CuPy does any math."""
    os.environ["CUPY_TF32"] = "0"


def torch_module():
    try:
        import torch
    except ImportError:
        return None
    return torch


def set_threads(threads: int | None, with_torch: bool = True) -> int:
    """Make NumPy's BLAS, gpunet's host array paths (gpunet.ops.host_threads)
    and PyTorch use the same number of threads; returns it.
    Default: the BLAS pool's current size."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        threadpool_info = threadpool_limits = None
    if threads is None:
        threads = blas_threads(threadpool_info)
    if threadpool_limits is not None:
        threadpool_limits(threads, user_api="blas")
    else:  # read by OpenBLAS/MKL at load time: only effective before NumPy is imported
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ[var] = str(threads)
    from ..ops import host_threads
    host_threads.set_num_threads(threads)
    torch = torch_module() if with_torch else None
    if torch is not None:
        torch.set_num_threads(threads)
    return threads


def blas_threads(threadpool_info=None) -> int:
    if threadpool_info is not None:
        n = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
        if n:
            return max(n)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count() or 1


def math_mode(with_torch: bool = True) -> dict:
    """TF32 off in CuPy (CUPY_TF32=0) and PyTorch; returns what is in force."""
    mode = {"dtype": "float32", "CUPY_TF32": os.environ.get("CUPY_TF32", "unset")}
    torch = torch_module() if with_torch else None
    if torch is not None:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        mode.update(torch_float32_matmul_precision=torch.get_float32_matmul_precision(),
                    torch_cuda_matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
                    torch_cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32))
    return mode


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_level_cache() -> int:
    """Bytes of the largest CPU cache (sysfs), 32 MiB when unknown."""
    best = 0
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        m = re.fullmatch(r"(\d+)([KMG]?)", f.read_text().strip())
        if m:
            best = max(best, int(m.group(1)) * {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}[m.group(2)])
    return best or 32 * 2 ** 20


def load_average() -> list | None:
    """1, 5 and 15-minute load averages: other work on a shared machine makes timings noisy."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def available_memory() -> int:
    try:
        m = re.search(r"^MemAvailable:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if m:
            return int(m.group(1)) * 1024
    except OSError:
        pass
    return 8 * 2 ** 30


def git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None}
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def gpu_info() -> dict:
    """Name, memory, L2, driver and runtime versions of GPU 0 (CuPy, nvidia-smi)."""
    import cupy
    rt = cupy.cuda.runtime
    props = rt.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    info = {"gpu": name, "compute_capability": f"{props['major']}.{props['minor']}",
            "gpu_memory_bytes": int(props["totalGlobalMem"]), "l2_cache_bytes": int(props.get("l2CacheSize", 0)),
            "sm_count": int(props["multiProcessorCount"]),
            "cuda_driver_api": _cuda_version(rt.driverGetVersion()),
            "cuda_runtime": _cuda_version(rt.runtimeGetVersion()), "cupy": cupy.__version__}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if smi.returncode == 0:
            info["driver"] = smi.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def environment(threads: int, gpu: bool, mode: dict, with_torch: bool = True) -> dict:
    """Everything needed to interpret (and reproduce) a result file."""
    from .. import __version__
    from ..ops import host_threads
    env = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "gpunet": __version__, **git_commit(), "python": platform.python_version(),
           "numpy": np.__version__, "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "threads": threads,
           "host_array_threads": host_threads.get_num_threads(),
           # whether OpenBLAS's threaded jobs ran on gpunet's pool (host_threads.adopt_blas_jobs)
           "blas_jobs_on_gpunet_pool": host_threads.adopt_blas_jobs(),
           "last_level_cache_bytes": last_level_cache(), "math_mode": mode, "load_average_at_start": load_average()}
    try:
        from threadpoolctl import threadpool_info
        env["blas"] = [{k: i.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                       for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        pass
    torch = torch_module() if with_torch else None
    env["torch"] = torch.__version__ if torch is not None else None
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        if gpu and torch.cuda.is_available():
            env["torch_cuda"] = torch.version.cuda
            env["cudnn"] = torch.backends.cudnn.version()
    if gpu:
        env.update(gpu_info())
    return env
