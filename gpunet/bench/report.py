"""Results out: a terminal table, JSON (with the environment), a Markdown
report and PNG plots (ratio to PyTorch, roofline, scaling sweeps; only when
matplotlib is installed). One file set per platform and date:
<out>/<label>-<YYYY-MM-DD>[-quick].{json,md} and -ratio/-roofline/-scaling.png."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def _ms(s):
    return "" if s is None else f"{s * 1e3:.3f}" if s < 1e-2 else f"{s * 1e3:.2f}" if s < 1 else f"{s * 1e3:.0f}"


def _num(v, fmt):
    return "" if v is None else format(v, fmt)


def row_cells(r: dict) -> list[str]:
    if r["status"] != "ok":
        return [r["name"], r["target"], "", "", "", "", "", "", _num(r.get("err"), ".1e"),
                f"{r['status'].upper()}: {r.get('reason', '')}"]
    frac = r.get("roofline_fraction")
    return [r["name"], r["target"], _ms(r["median_s"]), f"{_ms(r['min_s'])}-{_ms(r['max_s'])}",
            _num(r.get("gflops"), ".1f"), _num(r.get("gbps"), ".1f"),
            "" if frac is None else f"{100 * frac:.1f}% {r['bound'][:3]}",
            _num(r.get("ratio_to_torch"), ".2f"), _num(r.get("err"), ".1e"), f"ok ({r['reps']} reps)"]


HEADER = ["case", "impl", "median ms", "min-max ms", "GFLOP/s", "GB/s", "roofline", "vs torch", "max err",
          "status"]


def table(results: list[dict]) -> str:
    rows = [HEADER] + [row_cells(r) for r in results]
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(HEADER))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c[:60].ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def progress_line(label: str, results: list[dict]) -> str:
    parts = []
    for r in results:
        if r["status"] == "ok":
            ratio = r.get("ratio_to_torch")
            parts.append(f"{r['target']} {_ms(r['median_s'])} ms" + (f" ({ratio:.2f}x torch)" if ratio else ""))
        else:
            parts.append(f"{r['target']} {r['status'].upper()}")
    return f"[{label}] {results[0]['name']}: " + ", ".join(parts) if results else f"[{label}]"


# ---------------------------------------------------------------- sweeps
def sweeps(results: list[dict]) -> dict:
    """{sweep name: {target: [(x, median_s), ...] sorted by x}} over ok results."""
    out: dict = {}
    for r in results:
        if r.get("sweep") and r["status"] == "ok":
            name, x = r["sweep"]
            out.setdefault(name, {}).setdefault(r["target"], []).append((x, r["median_s"]))
    for per in out.values():
        for pts in per.values():
            pts.sort()
    return out


def growth_exponent(points) -> float | None:
    """k in time ~ x^k, least squares in log-log over the sweep points."""
    if len(points) < 2:
        return None
    x, t = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, t, 1)[0])


# ---------------------------------------------------------------- files
def stem(label: str, date: str, quick: bool) -> str:
    return f"{label}-{date[:10]}" + ("-quick" if quick else "")


def write_json(path: Path, report: dict):
    path.write_text(json.dumps(_plain(report), indent=1, allow_nan=False) + "\n")


def _plain(v):
    """JSON-ready: NumPy scalars as Python numbers, non-finite floats (an
    error that could not be measured) as null."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.integer, np.floating)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def gemm_ceiling_line(ceil: dict, env: dict) -> str | None:
    """The line saying how far the cpu backend's GEMMs (its host GEMM for 2-D
    float32 products; NumPy's BLAS for the rest) stay below the best GEMM
    measured (PyTorch/oneDNN's): the limit of every GEMM-bound cpu case
    against PyTorch. None without NumPy's and another measurement."""
    by = [m.get("flops_by", {}) for m in ceil.get("measured", [])]
    numpy_best = max((b["numpy"] for b in by if "numpy" in b), default=0.0)
    gpunet_best = max((b["gpunet"] for b in by if "gpunet" in b), default=0.0)
    other = {k: v for b in by for k, v in b.items() if k not in ("numpy", "gpunet")}
    if not numpy_best or not other:
        return None
    name, best = max(other.items(), key=lambda kv: kv[1])
    blas = next((b for b in env.get("blas") or []), {})
    lib = " ".join(str(blas[k]) for k in ("internal_api", "version", "architecture") if blas.get(k)) or "NumPy's BLAS"
    own = max(gpunet_best, numpy_best)
    host = f"gpunet's host GEMM (2-D products): {gpunet_best / 1e9:.1f} GFLOP/s, " if gpunet_best else ""
    return (f"- {host}NumPy's float32 GEMM ({lib}): {numpy_best / 1e9:.1f} GFLOP/s; the best measured: {name}, "
            f"{best / 1e9:.1f}: a compute-bound cpu case that is all GEMM cannot get below {best / own:.2f}x the "
            "time of a PyTorch case running at that best rate")


def gemm_section(results: list[dict]) -> list[str]:
    """The GEMM share of every cpu case that has one (gpunet.bench.gemm_ceiling)."""
    rows = [r for r in results if r.get("gemm") and r.get("ratio_to_torch")]
    if not rows:
        return []
    lines = ["", "## GEMM share and GEMM floor (cpu, float32)", "",
             "Every matrix product of one gpunet step recorded (its host GEMM and numpy.matmul), then each "
             "replayed alone on the path gpunet took and through torch.matmul (same shapes, layouts and threads, "
             "operands in cache, best of a few). `host` counts those on the host GEMM. `GEMM floor` = "
             "max(G_gpunet, T_torch - G_torch + G_gpunet) / T_torch: the gpunet/PyTorch ratio left if everything "
             "but these products took PyTorch's time (where PyTorch runs other algorithms, as its direct "
             "convolutions, G_gpunet / T_torch bounds it). `side by side`: products gpunet ran on several host "
             "threads at once, one BLAS thread each (attention's blocks); one-at-a-time replays do not model "
             "them, so they count as the rest of the step.", "",
             "| case | impl | GEMMs per step | host | GFLOP | gpunet ms | torch.matmul ms | gpunet / torch | "
             "GEMM floor | vs torch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r["gemm"]
        side = f" (+{g['side_by_side']} side by side)" if g.get("side_by_side") else ""
        share = f"{g['gpunet_s'] / g['torch_s']:.2f}" if g["count"] else ""
        lines.append(f"| {r['name']} | {r['target']} | {g['count']}{side} | {g.get('host_count', 0)} | "
                     f"{g['flops'] / 1e9:.3f} | {_ms(g['gpunet_s'])} | {_ms(g['torch_s'])} | {share} | "
                     f"{_num(g.get('floor_ratio'), '.2f')} | "
                     f"{r['ratio_to_torch']:.2f} |")
    return lines


def markdown(report: dict) -> str:
    env, results = report["environment"], report["results"]
    ceil = report.get("ceilings") or {}
    lines = [f"# gpunet benchmark: {report['label']} ({env['date'][:10]})", ""]
    lines += ["## Environment", "", "| | |", "|---|---|"]
    for k, v in env.items():
        lines.append(f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |")
    lines += ["", "## Ceilings (measured in this run)", ""]
    if ceil:
        lines += [f"- peak float32 GEMM: {ceil['flops'] / 1e9:.1f} GFLOP/s",
                  f"- memory bandwidth: {ceil['bandwidth'] / 1e9:.1f} GB/s", f"- how: {ceil['how']}"]
        for i, m in enumerate(ceil.get("measured", [])):
            by = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in m.get("flops_by", {}).items())
            bw = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in m.get("bandwidth_by", {}).items())
            lines.append(f"- measurement {i + 1}: {m['flops'] / 1e9:.1f} GFLOP/s" + (f" ({by})" if by else "")
                         + f", {m['bandwidth'] / 1e9:.1f} GB/s" + (f" ({bw})" if bw else ""))
        line = gemm_ceiling_line(ceil, env)
        if line:
            lines.append(line)
    else:
        lines.append("- not measured for this platform (no roofline fractions)")
    p = report["policy"]
    rewarm = p["warmup_s"] if p.get("rewarm_s") is None else p["rewarm_s"]  # (older reports: no rounds)
    lines += ["", "## Method", "",
              f"Shapes: `{report['size']}` set. Every implementation is first validated against "
              f"{report['reference']} (normwise error max|a-r|/max|r| of every output, forward and gradients, "
              "within each case's rtol); an invalid one is not timed. Then "
              f"at least {p['min_warmup']} warm-up steps ({p['warmup_s']} s), at least {p['min_reps']} and at most "
              f"{p['max_reps']} timed repetitions (time budget {p['budget_s']} s per implementation) in "
              f"{p.get('rounds', 2)} alternating rounds (warm-up of the later ones: {rewarm} s), cycling "
              f"input copies whose total exceeds {p['cache_bytes'] >> 20} MiB of cache. "
              f"{report['timer']}. Roofline: floor = max(FLOPs / peak, bytes / bandwidth); the table shows "
              "floor / median time and which term bounds it (com: compute, mem: memory). A fraction above 100% "
              "means the implementation did less than the model counts (e.g. Winograd convolution needs fewer "
              "multiplications than the direct one) or the ceilings were measured while the machine was busier. "
              "`vs torch` = gpunet time / PyTorch time (below 1: gpunet is faster).", ""]
    lines += ["## Results", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row_cells(r)) + " |" for r in results]
    lines += ["", "## Summary per op (gpunet)", "", "| case | impl | vs torch | GEMM floor | roofline |",
              "|---|---|---|---|---|"]
    for r in results:
        if r["status"] == "ok" and not r["target"].startswith("torch"):
            frac = r.get("roofline_fraction")
            lines.append(f"| {r['name']} | {r['target']} | {_num(r.get('ratio_to_torch'), '.2f')} | "
                         f"{_num(r.get('gemm', {}).get('floor_ratio'), '.2f')} | "
                         f"{'' if frac is None else f'{100 * frac:.1f}%'} |")
    lines += gemm_section(results)
    sw = sweeps(results)
    if sw:
        lines += ["", "## Scaling sweeps", ""]
        for name, per in sw.items():
            lines += [f"### {name}", "", "| impl | x: median ms | growth |", "|---|---|---|"]
            for target, pts in per.items():
                k = growth_exponent(pts)
                lines.append(f"| {target} | " + ", ".join(f"{x:g}: {_ms(t)}" for x, t in pts)
                             + f" | {'' if k is None else f'~x^{k:.2f}'} |")
            lines.append("")
    notes = {r["op"]: r["note"] for r in results if r.get("note")}
    notes.update({f"{r['name']} [{r['target']}]": ", ".join(f"{k}: {v}" for k, v in r["info"].items())
                  for r in results if r.get("info")})
    if notes:
        lines += ["", "## Case notes", ""] + [f"- {k}: {v}" for k, v in notes.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plots
def plots(report: dict, base: Path) -> list[Path]:
    """PNG plots next to the JSON; none (and no error) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    results = [r for r in report["results"] if r["status"] == "ok"]
    written = []
    ratios = [r for r in results if r.get("ratio_to_torch")]
    if ratios:
        fig, ax = plt.subplots(figsize=(10, max(3, 0.3 * len(ratios))))
        labels = [f"{r['name']} [{r['target']}]" for r in ratios]
        ax.barh(range(len(ratios)), [r["ratio_to_torch"] for r in ratios],
                color=["tab:green" if r["ratio_to_torch"] <= 1 else "tab:red" for r in ratios])
        ax.axvline(1.0, color="k", lw=1)
        ax.set_yticks(range(len(ratios)), labels, fontsize=7)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_xlabel("gpunet time / PyTorch time (log; < 1 is faster)")
        ax.set_title(f"{report['label']}: ratio to PyTorch")
        written.append(_save(fig, plt, base.with_name(base.name + "-ratio.png")))
    ceil = report.get("ceilings")
    roof = [r for r in results if r.get("roofline_fraction") and r["bytes"] > 0]
    if ceil and roof:
        fig, ax = plt.subplots(figsize=(8, 6))
        ai = np.array([r["flops"] / r["bytes"] for r in roof])
        xs = np.logspace(math.log10(ai.min() / 2), math.log10(ai.max() * 2), 100)
        ax.plot(xs, np.minimum(ceil["flops"], xs * ceil["bandwidth"]) / 1e9, "k-", label="roofline (measured)")
        for target in sorted({r["target"] for r in roof}):
            sel = [r for r in roof if r["target"] == target]
            ax.scatter([r["flops"] / r["bytes"] for r in sel], [r["gflops"] for r in sel], label=target, s=18)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("arithmetic intensity (FLOP / fewest bytes)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(f"{report['label']}: roofline")
        ax.legend(fontsize=7)
        written.append(_save(fig, plt, base.with_name(base.name + "-roofline.png")))
    sw = sweeps(results)
    if sw:
        cols = min(2, len(sw))
        rows = math.ceil(len(sw) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
        for ax in axes.flat[len(sw):]:
            ax.set_visible(False)
        for ax, (name, per) in zip(axes.flat, sw.items()):
            xs = sorted({p[0] for pts in per.values() for p in pts})
            for target, pts in per.items():
                ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], "o-", label=target)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.minorticks_off()
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.set_xlabel(name)
            ax.set_ylabel("median ms")
            ax.legend(fontsize=7)
        fig.suptitle(f"{report['label']}: scaling")
        written.append(_save(fig, plt, base.with_name(base.name + "-scaling.png")))
    return written


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_all(report: dict, out_dir: Path, with_plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / stem(report["label"], report["environment"]["date"], report["size"] == "quick")
    paths = [base.with_name(base.name + ".json"), base.with_name(base.name + ".md")]
    write_json(paths[0], report)
    paths[1].write_text(markdown(report))
    if with_plots:
        paths += plots(report, base)
    return paths
