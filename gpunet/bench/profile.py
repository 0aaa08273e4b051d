"""`python -m gpunet.bench profile`: the simulator's memory-access profile of
every kernel family (csrc/sim/profile.cpp in gpunet._C_simcheck), the figures
Nsight Compute reports, joined with each kernel's registers and shared memory
from the nvcc build's ptxas report into a theoretical occupancy on sm_90, and
a MODELLED H200 time. Nothing here ran on a GPU.

Per kernel and launch shape:
    load_sectors_per_request, store_sectors_per_request   32-byte sectors per
        warp-level global load / store (ideal: 4 for one float per lane)
    sector_efficiency            bytes used (a byte several lanes read counts
        once) / bytes in the sectors touched
    smem_wavefronts_per_request  shared-memory wavefronts per request (1: no
        bank conflict; 32: every lane in one bank)
    active_lanes_per_request, barriers_per_block
    registers, smem_bytes        from `-Xptxas -v` for sm_90 (smem: static +
        the launch's dynamic), None when no nvcc build log is found
    occupancy                    resident warps / 64 on an sm_90 SM
    modelled_h200_us             the distinct sectors the launch touches in
        global memory (what an ideal cache moves from DRAM, so the sector
        inefficiency is in it) at 4.8 TB/s; the simulator counts no FLOPs, so
        compute-bound kernels are under-modelled. Labelled modelled, never measured.

The figures are of the accesses the host compiler emitted: a float4 read field
by field through a reference counts as four 4-byte loads (csrc/sim/README.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np

H200_DRAM_BYTES_PER_S = 4.8e12
SM90 = dict(max_warps=64, max_blocks=32, registers=65536, register_unit=256, smem_bytes=233472,
            smem_per_block_reserved=1024)
PROBES = ("probe_copy_coalesced", "probe_copy_stride32", "probe_copy_float4", "probe_smem_conflict32",
          "probe_smem_padded")


def aligned(n: int) -> np.ndarray:
    """A float32 array of n zeros starting on a 128-byte boundary (whole sectors)."""
    buf = np.zeros(n + 32, dtype=np.float32)
    skip = (-buf.ctypes.data % 128) // 4
    return buf[skip:skip + n]


def run_probes(kernels) -> None:
    x, out = aligned(1024), aligned(128)
    x[:] = np.arange(1024)
    for name in PROBES:
        kernels._profile_probe(name, x, out, 0)


def family_workloads(quick: bool):
    """(family, what) -> a function running that family's kernels forward and
    backward on the sim backend at a modest shape."""
    from .. import nn, optim

    n = 2 if quick else 8
    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def fwd_bwd(module, *inputs):
        def run():
            m = module.to("sim")
            y = m(*inputs)
            m.backward(*(np.ones_like(a) for a in (y if isinstance(y, tuple) else (y,)) if a is not None))
        return run

    def cross_entropy():
        crit = nn.CrossEntropyLoss(label_smoothing=0.1).to("sim")
        crit(rand(16 * n, 100), rng.integers(0, 100, 16 * n))
        crit.backward()

    def adam():
        p = nn.Linear(64, 64 * n).to("sim")
        p(rand(4, 64))
        p.backward(rand(4, 64 * n))
        optim.Adam(p.parameters(), lr=1e-3).step()

    def lstm():
        m = nn.LSTM(16, 32).to("sim")
        out, _ = m(rand(4, n, 16))
        m.backward(np.ones_like(out))

    def attention():
        m = nn.MultiheadAttention(64, 4, batch_first=True).to("sim")
        x = rand(n, 32, 64)
        out, _ = m(x, x, x, need_weights=False)
        m.backward(np.ones_like(out))

    def embedding():
        m = nn.Embedding(100, 64).to("sim")
        y = m(rng.integers(0, 100, (n, 32)))
        m.backward(np.ones_like(y))

    return {
        ("activation", f"GELU ({64 * n}, 256)"): fwd_bwd(nn.GELU(), rand(64 * n, 256)),
        ("attention", f"MultiheadAttention batch {n} seq 32 dim 64 heads 4"): attention,
        ("conv", f"Conv2d ({n},8,16,16)->16 k3 p1"): fwd_bwd(nn.Conv2d(8, 16, 3, padding=1), rand(n, 8, 16, 16)),
        ("dropout", f"Dropout p=0.5 ({64 * n}, 256)"): fwd_bwd(nn.Dropout(0.5), rand(64 * n, 256)),
        ("embedding", f"Embedding 100x64, ({n}, 32) tokens"): embedding,
        ("linear", f"Linear 128->64 batch {16 * n}"): fwd_bwd(nn.Linear(128, 64), rand(16 * n, 128)),
        ("loss", f"CrossEntropyLoss ({16 * n}, 100) label_smoothing 0.1"): cross_entropy,
        ("norm", f"LayerNorm ({16 * n}, 256)"): fwd_bwd(nn.LayerNorm(256), rand(16 * n, 256)),
        ("optim", f"Adam step, {64 * 64 * n + 64 * n} params"): adam,
        ("pool", f"MaxPool2d 3x3/2 p1 ({n},16,16,16)"): fwd_bwd(nn.MaxPool2d(3, 2, 1), rand(n, 16, 16, 16)),
        ("pool", f"AvgPool2d 2x2 ({n},16,16,16)"): fwd_bwd(nn.AvgPool2d(2), rand(n, 16, 16, 16)),
        ("rnn", f"LSTM 16->32 seq 4 batch {n}"): lstm,
        ("softmax", f"Softmax ({16 * n}, 1000)"): fwd_bwd(nn.Softmax(dim=-1), rand(16 * n, 1000)),
    }


# ---------------------------------------------------------------- ptxas report
def ptxas_resources(log_text: str, arch: str = "sm_90") -> dict[str, dict]:
    """kernel base name -> {"registers", "smem_bytes"} (the largest over its
    instantiations) from the `-Xptxas -v` lines of an nvcc build log."""
    entries, current = [], None
    for line in log_text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(\w+)'", line)
        if m:
            current = m.group(1) if m.group(2) == arch else None
            continue
        m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
        if m and current:
            entries.append((current, int(m.group(1)), int(m.group(2) or 0)))
            current = None
    names = _demangle([e[0] for e in entries])
    out: dict[str, dict] = {}
    for (_, regs, smem), name in zip(entries, names):
        base = kernel_base(name)
        prev = out.get(base, {"registers": 0, "smem_bytes": 0})
        out[base] = {"registers": max(prev["registers"], regs), "smem_bytes": max(prev["smem_bytes"], smem)}
    return out


def _demangle(symbols: list[str]) -> list[str]:
    if not symbols:
        return []
    try:
        done = subprocess.run(["c++filt"], input="\n".join(symbols), capture_output=True, text=True, check=True)
        return done.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return symbols


def kernel_base(name: str) -> str:
    """'gpunet::(anonymous namespace)::softmax_kernel<true>(float const*, ...)' or
    'softmax_kernel<kLog>' -> 'softmax_kernel'."""
    depth, head = 0, []
    for c in name:  # drop template arguments and the parameter list
        if c in "<(":
            depth += 1
        elif c in ">)":
            depth -= 1
        elif depth == 0:
            head.append(c)
    words = "".join(head).split("::")[-1].split()
    return words[-1] if words else name


def git_commit(root: Path) -> str | None:
    """The short commit of the working tree profiled, '+dirty' when it has changes."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def find_build_log(root: Path) -> Path | None:
    logs = sorted(root.glob("build/cmake-*/build.log"))
    return logs[-1] if logs else None


def occupancy(threads: int, registers: int | None, smem_bytes: int) -> float | None:
    """Theoretical occupancy of one sm_90 SM: resident warps / 64."""
    if registers is None:
        return None
    warps = -(-threads // 32)
    limits = [SM90["max_blocks"], SM90["max_warps"] // warps]
    if registers:
        unit = SM90["register_unit"]
        per_warp = -(-registers * 32 // unit) * unit
        limits.append(SM90["registers"] // (per_warp * warps))
    if smem_bytes:
        limits.append(SM90["smem_bytes"] // (smem_bytes + SM90["smem_per_block_reserved"]))
    return min(limits) * warps / SM90["max_warps"]


# ---------------------------------------------------------------- records
def summarize(raw: list[dict], resources: dict[str, dict] | None) -> list[dict]:
    """One record per kernel name, launch shape and workload, with the derived figures."""
    groups: dict[tuple, dict] = {}
    for r in raw:
        key = (r["case"], r["family"], r["kernel"], r["grid"], r["block"], r["dynamic_smem_bytes"])
        g = groups.setdefault(key, defaultdict(int))
        g["launches"] += 1
        for k, v in r.items():
            if isinstance(v, int) and k != "dynamic_smem_bytes":
                g[k] += v
    out = []
    for (case, family, kernel, grid, block, dyn), c in groups.items():
        def ratio(a, b):
            return round(c[a] / c[b], 3) if c[b] else None
        threads = block[0] * block[1] * block[2]
        res = (resources or {}).get(kernel_base(kernel))
        regs = res["registers"] if res else None
        smem = (res["smem_bytes"] if res else 0) + dyn
        sectors = c["global_load_sectors"] + c["global_store_sectors"]
        requested = c["global_load_bytes"] + c["global_store_bytes"]
        out.append({
            "family": family, "case": case, "kernel": kernel, "grid": list(grid), "block": list(block),
            "launches": c["launches"],
            "load_sectors_per_request": ratio("global_load_sectors", "global_load_requests"),
            "store_sectors_per_request": ratio("global_store_sectors", "global_store_requests"),
            "sector_efficiency": round(requested / (32 * sectors), 3) if sectors else None,
            "smem_wavefronts_per_request": (round((c["shared_load_wavefronts"] + c["shared_store_wavefronts"])
                                                  / (c["shared_load_requests"] + c["shared_store_requests"]), 3)
                                            if c["shared_load_requests"] + c["shared_store_requests"] else None),
            "smem_load_wavefronts_per_request": ratio("shared_load_wavefronts", "shared_load_requests"),
            "smem_store_wavefronts_per_request": ratio("shared_store_wavefronts", "shared_store_requests"),
            "active_lanes_per_request": ratio("lane_slots", "warp_requests"),
            "barriers_per_block": ratio("barriers", "blocks"),
            "registers": regs,
            "smem_bytes": smem if res else (dyn or None),
            "occupancy": None if regs is None else round(occupancy(threads, regs, smem), 3),
            "modelled_h200_us": round(32 * c["dram_sectors"] / c["launches"] / H200_DRAM_BYTES_PER_S * 1e6, 4),
            "counters": {k: v for k, v in c.items() if k != "launches"},
        })
    return out


def collect(quick: bool) -> list[dict]:
    """Run the probes and every family's workload on the checked sim module
    with the profile on; the raw launch records, tagged with family and case."""
    from ..backend import get_backend, sim_module
    if sim_module() != "gpunet._C_simcheck":
        raise RuntimeError("the access profile needs the sim backend on gpunet._C_simcheck: "
                           "set GPUNET_SIM_RACECHECK=1 before gpunet creates the sim backend")
    kernels = get_backend("sim").kernels
    raw = []

    def run(family, case, fn):
        kernels._profile(True)
        try:
            fn()
        finally:
            records = kernels._profile_records()
            kernels._profile(False)
        for r in records:
            raw.append({**r, "family": family, "case": case})

    run("profile", "probes", lambda: run_probes(kernels))
    for (family, case), fn in family_workloads(quick).items():
        run(family, case, fn)
    return raw


def markdown(records: list[dict], log: Path | None) -> str:
    lines = [
        "# Memory-access profile on the simulator (MODELLED, not measured on a GPU)", "",
        "Sectors per request, shared-memory wavefronts and active lanes come from the simulator's",
        "instrumented accesses (Nsight Compute's definitions); registers and static shared memory from",
        f"the sm_90 ptxas report ({log.name if log else 'no nvcc build log found'}); occupancy is the",
        "theoretical one on an H200 SM; modelled_h200_us is the distinct global sectors at 4.8 TB/s.", "",
        "| family | case | kernel | grid x block | ld sect/req | st sect/req | sector eff. | smem wavefr./req "
        "| lanes/req | barriers/block | regs | smem B | occupancy | modelled H200 us |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        shape = f"{'x'.join(map(str, r['grid']))} x {'x'.join(map(str, r['block']))}"
        cells = [r["family"], r["case"], f"`{r['kernel']}`", shape] + [
            "-" if r[k] is None else str(r[k]) for k in
            ("load_sectors_per_request", "store_sectors_per_request", "sector_efficiency",
             "smem_wavefronts_per_request", "active_lanes_per_request", "barriers_per_block", "registers",
             "smem_bytes", "occupancy", "modelled_h200_us")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- before / after
COMPARED = (("modelled_h200_us", "modelled H200 us"), ("load_sectors_per_request", "ld sect/req"),
            ("store_sectors_per_request", "st sect/req"), ("sector_efficiency", "sector eff."),
            ("registers", "regs"), ("occupancy", "occupancy"))


def _keyed(records: list[dict]) -> dict[tuple, dict]:
    """(family, case, kernel, k) -> record, k counting a kernel's launch shapes in one case."""
    out, seen = {}, defaultdict(int)
    for r in records:
        base = (r["family"], r["case"], kernel_base(r["kernel"]))
        out[base + (seen[base],)] = r
        seen[base] += 1
    return out


def compare(before: dict, after: dict, before_label: str, after_label: str) -> str:
    """A Markdown table of two profiles (the JSON of two runs), one row per
    kernel launch shape of each case, before -> after for each figure; a
    kernel only one run has shows '-' on the other side."""
    old, new = _keyed(before["records"]), _keyed(after["records"])
    keys = list(old) + [k for k in new if k not in old]
    head = " | ".join(f"{title} before | after" for _, title in COMPARED)
    lines = ["# Access profile before and after (MODELLED on the simulator, not measured on a GPU)", "",
             f"Before: {before_label}. After: {after_label}. Each row is one kernel launch shape of a",
             "case (kernel base names: the after run may have split or renamed a kernel); '-' where",
             "one run has no such launch.", "",
             f"| family | case | kernel | {head} |", "|---|---|---|" + "---|---|" * len(COMPARED)]
    for key in keys:
        if key[0] == "profile":
            continue
        a, b = old.get(key), new.get(key)
        cells = []
        for field, _ in COMPARED:
            for r in (a, b):
                cells.append("-" if r is None or r.get(field) is None else str(r[field]))
        lines.append(f"| {key[0]} | {key[1]} | `{key[2]}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpunet.bench profile",
                                 description="The simulator's memory-access profile of every kernel family "
                                             "(modelled H200 figures, never measured ones).")
    ap.add_argument("--device", default="sim", choices=["sim"], help="only the simulator can profile")
    ap.add_argument("--quick", action="store_true", help="the smallest shapes")
    ap.add_argument("--out", default="bench/results", help="directory for sim-profile.json and sim-profile.md")
    ap.add_argument("--build-log", help="nvcc build log with the ptxas report (default: build/cmake-*/build.log)")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                    help="print a before/after Markdown table of two sim-profile.json files instead of profiling")
    args = ap.parse_args(argv)
    if args.compare:
        runs = [json.loads(Path(f).read_text()) for f in args.compare]
        labels = [run.get("commit") or Path(f).name for run, f in zip(runs, args.compare)]
        print(compare(*runs, *labels), end="")
        return 0
    os.environ["GPUNET_SIM_RACECHECK"] = "1"  # before the sim backend is first created
    root = Path(__file__).resolve().parents[2]
    log = Path(args.build_log) if args.build_log else find_build_log(root)
    resources = ptxas_resources(log.read_text()) if log and log.is_file() else None
    records = summarize(collect(args.quick), resources)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sim-profile.json").write_text(json.dumps(
        {"modelled": True, "device": "sim (gpunet._C_simcheck)", "build_log": str(log.name) if log else None,
         "commit": git_commit(root), "records": records}, indent=1))
    (out / "sim-profile.md").write_text(markdown(records, log))
    print(markdown(records, log))
    print(f"wrote {out / 'sim-profile.json'} and {out / 'sim-profile.md'}")
    return 0
