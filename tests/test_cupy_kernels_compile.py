"""Every CuPy kernel source string in the package, compiled with nvcc for
sm_90, so that a typo in a fusion shows in CI rather than on a GPU.

CuPy compiles its kernels only when they are first called on a GPU. Here a
stand-in for the cupy module records what each kernel builder in gpunet
hands to ElementwiseKernel, ReductionKernel, RawKernel and RawModule; every
such call site in the package (found in the source) must be reached. Each
elementwise and reduction body is wrapped the way CuPy wraps it (non-raw
inputs as `const T x = _raw_x[i];`, outputs as `T &y = _raw_y[i];`, raw
arguments as pointers, `i` the loop index, REDUCE/POST_MAP macros), and every
kernel is compiled with T = float and T = double. Skipped only where nvcc is
absent."""
import ast
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpunet
from gpunet.ops import cupy_kernels

ROOT = Path(gpunet.__file__).resolve().parent
CONSTRUCTORS = ("ElementwiseKernel", "ReductionKernel", "RawKernel", "RawModule")
# CuPy's C names of the dtypes a parameter list may name; any other type name
# is a placeholder (here T), bound to the arrays' dtype.
CTYPES = {"bool": "bool", "int8": "signed char", "int16": "short", "int32": "int", "int64": "long long",
          "uint8": "unsigned char", "uint16": "unsigned short", "uint32": "unsigned int",
          "uint64": "unsigned long long", "float32": "float", "float64": "double"}
PLACEHOLDER_DTYPES = (np.float32, np.float64)  # the dtypes gpunet's fusions run in


def find_nvcc():
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    candidates += [str(Path(home) / "bin" / "nvcc") for home in
                   (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda") if home]
    return next((c for c in candidates if c and Path(c).is_file()), None)


class Recorded:
    def __init__(self, kind, args, kwargs, site):
        self.kind, self.args, self.kwargs, self.site = kind, args, kwargs, site

    def __call__(self, *args, **kwargs):
        raise AssertionError("a recorded kernel must not be launched")


class FakeCupy:
    """Records each kernel construction with the file and line it came from."""

    def __init__(self):
        self.kernels: list[Recorded] = []

    def __getattr__(self, kind):
        if kind not in CONSTRUCTORS:
            raise AttributeError(f"cupy.{kind}: a kernel builder used more of CuPy than the recorder knows")

        def construct(*args, **kwargs):
            caller = sys._getframe(1)
            site = (Path(caller.f_code.co_filename).resolve(), caller.f_lineno)
            self.kernels.append(Recorded(kind, args, kwargs, site))
            return self.kernels[-1]
        return construct


def constructor_sites():
    """(file, first line, last line) of every call to a CuPy kernel constructor in the package."""
    sites = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CONSTRUCTORS:
                sites.append((path.resolve(), node.lineno, node.end_lineno))
    return sites


def launched_sources():
    """(module, name, source) of every cupy_kernels.launch(name, SOURCE, ...) call in the package."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "launch"
                    and len(node.args) >= 2):
                module = importlib.import_module(
                    "gpunet." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
                if module.launch is not cupy_kernels.launch:
                    continue
                name, source = ast.literal_eval(node.args[0]), getattr(module, node.args[1].id)
                found.append((module, name, source))
    return found


def _call_builders(fake):
    """Build every kernel of the package against `fake`: each cached builder
    (functools.cache, called unwrapped so no stand-in stays in a cache) that
    takes no argument, the activation backward per kind, and every launched
    raw-kernel source per dtype."""
    from gpunet.ops import activation
    for module_name in ops_modules():
        module = importlib.import_module(module_name)
        for name, fn in vars(module).items():
            wrapped = getattr(fn, "__wrapped__", None)
            if (wrapped is not None and inspect.isfunction(wrapped) and wrapped.__module__ == module.__name__
                    and not inspect.signature(wrapped).parameters and "Kernel" in inspect.getsource(wrapped)):
                wrapped()
    for key in activation.FUSED_BACKWARD:
        activation._fused_backward_kernel.__wrapped__(key)
    for _, name, source in launched_sources():
        for dtype in PLACEHOLDER_DTYPES:
            cupy_kernels._raw_kernel.__wrapped__(name, source, dtype)


def ops_modules():
    """The modules that hold the CuPy fusions (gpunet/ops/*.py)."""
    return ["gpunet." + ".".join(p.relative_to(ROOT).with_suffix("").parts)
            for p in sorted((ROOT / "ops").glob("*.py")) if p.stem != "__init__"]


@pytest.fixture(scope="module")
def recorded():
    fake = FakeCupy()
    patched = []
    for name in ops_modules():
        module = importlib.import_module(name)
        if getattr(module, "cupy", None) is cupy_kernels.cupy:
            patched.append(module)
    try:
        for module in patched:
            module.cupy = lambda: fake
        _call_builders(fake)
    finally:
        for module in patched:
            module.cupy = cupy_kernels.cupy
    return fake.kernels


# ---------------------------------------------------------------- CuPy's wrapping, emulated
def parse_params(spec: str):
    """[(raw, type, name)] of a CuPy parameter list such as 'raw T x, int64 n'."""
    params = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(raw\s+)?(\w+)\s+(\w+)", item)
        assert m, f"cannot parse the kernel parameter {item!r}"
        params.append((bool(m.group(1)), CTYPES.get(m.group(2), "T"), m.group(3)))
    return params


def _signature_and_bindings(in_params, out_params, index: str):
    sig, bind = [], []
    for params, is_out in ((in_params, False), (out_params, True)):
        for raw, ctype, name in parse_params(params):
            if raw:
                sig.append(f"{ctype}* {name}")
            elif is_out:
                sig.append(f"{ctype}* _raw_{name}")
                bind.append(f"{ctype} &{name} = _raw_{name}[{index}];")
            else:
                sig.append(f"const {ctype}* _raw_{name}")
                bind.append(f"const {ctype} {name} = _raw_{name}[{index}];")
    return ", ".join(sig + ["long long _n"]), "\n    ".join(bind)


SUPPORTED_KWARGS = {"ElementwiseKernel": {"preamble", "loop_prep", "after_loop"},
                    "ReductionKernel": {"preamble"}, "RawKernel": {"options"}, "RawModule": {"options"}}


def cuda_source(k: Recorded) -> str:
    """The CUDA C++ of one recorded kernel (T left to a typedef around it)."""
    unknown = set(k.kwargs) - SUPPORTED_KWARGS[k.kind]
    assert not unknown, f"{k.kind} at {k.site}: keyword(s) {unknown} are not emulated here; extend the test"
    if k.kind in ("RawKernel", "RawModule"):
        return k.args[0] if k.args else k.kwargs.get("code")
    if k.kind == "ElementwiseKernel":
        in_params, out_params, body, name = k.args[:4]
        sig, bind = _signature_and_bindings(in_params, out_params, "i")
        return f"""{k.kwargs.get('preamble', '')}
extern "C" __global__ void {name}({sig}) {{
  {k.kwargs.get('loop_prep', '')};
  for (ptrdiff_t i = blockIdx.x * blockDim.x + threadIdx.x; i < _n; i += ptrdiff_t(blockDim.x) * gridDim.x) {{
    {bind}
    {body};
  }}
  {k.kwargs.get('after_loop', '')};
}}
"""
    in_params, out_params, map_expr, reduce_expr, post_map_expr, identity, name = k.args[:7]
    out_type = parse_params(out_params)[0][1]
    sig, bind = _signature_and_bindings(in_params, "", "_j")
    _, out_bind = _signature_and_bindings("", out_params, "blockIdx.x")
    outs = ", ".join(f"{ctype}* _raw_{n}" for _, ctype, n in parse_params(out_params))
    return f"""{k.kwargs.get('preamble', '')}
#define REDUCE(a, b) ({reduce_expr})
#define POST_MAP(a) ({post_map_expr})
typedef {out_type} _type_reduce;
extern "C" __global__ void {name}({sig}, {outs}) {{
  _type_reduce _s = _type_reduce({identity});
  for (ptrdiff_t _j = threadIdx.x; _j < _n; _j += blockDim.x) {{
    {bind}
    _type_reduce _a = static_cast<_type_reduce>({map_expr});
    _s = REDUCE(_s, _a);
  }}
  if (threadIdx.x == 0) {{
    {out_bind}
    POST_MAP(_s);
  }}
}}
#undef REDUCE
#undef POST_MAP
"""


def translation_unit(kernels, ctype: str) -> tuple[str, list[tuple[int, str]]]:
    """One .cu with every kernel in its own namespace, and (first line, label) per kernel."""
    lines, starts = [], []
    for n, k in enumerate(kernels):
        label = f"{k.kind} {k.args[3] if k.kind == 'ElementwiseKernel' else k.args[-1] if k.kind != 'RawModule' else ''}"
        label += f" at {k.site[0].relative_to(ROOT.parent)}:{k.site[1]}"
        starts.append((len(lines) + 1, label))
        # raw kernels carry their own typedef (cupy_kernels._raw_kernel); the others get T here
        head = [] if k.kind in ("RawKernel", "RawModule") else [f"typedef {ctype} T;"]
        lines += [f"// ---- {label}", f"namespace k{n} {{", *head, *cuda_source(k).splitlines(), "}"]
    return "\n".join(lines) + "\n", starts


def test_every_cupy_kernel_call_site_is_built(recorded):
    sites = constructor_sites()
    assert sites, "no CuPy kernel constructor found in the package"
    hit = {k.site for k in recorded}
    missed = [f"{path.relative_to(ROOT.parent)}:{first}" for path, first, last in sites
              if not any(p == path and first <= line <= last for p, line in hit)]
    assert not missed, (f"kernel constructors no builder reached: {missed}; make their builder reachable from "
                        "_call_builders in this test")


def test_cupy_kernels_compile_with_nvcc(recorded, tmp_path):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (CUDACXX, PATH, CUDA_HOME, /usr/local/cuda)")
    procs = []
    for dtype in PLACEHOLDER_DTYPES:
        ctype = CTYPES[np.dtype(dtype).name]
        # raw kernels were recorded once per dtype, with their typedef in the source
        kernels = [k for k in recorded if k.kind not in ("RawKernel", "RawModule") or f"typedef {ctype} T;" in k.args[0]]
        source, starts = translation_unit(kernels, ctype)
        path = tmp_path / f"cupy_kernels_{ctype}.cu"
        path.write_text(source)
        cmd = [nvcc, "-c", "-arch=sm_90", "-std=c++17", "-o", str(path.with_suffix(".o")), str(path)]
        procs.append((path, starts, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                     text=True)))
    failures = []
    for path, starts, proc in procs:
        out, _ = proc.communicate(timeout=300)
        if proc.returncode:
            lines = {int(m) for m in re.findall(rf"{re.escape(path.name)}\((\d+)\)", out)}
            where = sorted({max((s for s in starts if s[0] <= line), default=(0, "?"))[1] for line in lines})
            failures.append(f"{path.name}: nvcc failed in {where}:\n{out[-4000:]}")
    assert not failures, "\n".join(failures)
