"""Regression check between two bench runs (their JSON files): per case and
implementation, the new median time over the old one, flagged when it exceeds
the noise band.

The band of a row is the larger of a floor (--noise, 5% by default) and the
two runs' own spreads, (p75 - p25)/median of each added: a case whose
repetitions scattered by 10% cannot show a 5% slowdown. Where both runs timed
PyTorch too, the row also shows gpunet/PyTorch before and after: both sides
of that ratio saw the same machine, so it separates a slowdown of the code
from a busier machine (the flag itself is on the plain time ratio)."""
from __future__ import annotations

import json
from pathlib import Path

NOISE_FLOOR = 0.05


def _spread(r: dict) -> float:
    if not r.get("median_s") or r.get("p25_s") is None or r.get("p75_s") is None:
        return 0.0
    return (r["p75_s"] - r["p25_s"]) / r["median_s"]


def _timed(run: dict) -> dict[tuple[str, str], dict]:
    return {(r["name"], r["target"]): r for r in run.get("results", [])
            if r.get("status") == "ok" and r.get("median_s")}


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4g}"


def compare(old: dict, new: dict, old_label: str, new_label: str, noise: float = NOISE_FLOOR) -> tuple[str, int]:
    """(Markdown report, number of flagged slowdowns)."""
    before, after = _timed(old), _timed(new)
    # cases since named after their family ("gelu.fwdbwd ..." -> "activation.gelu.fwdbwd ...")
    renamed = {(n, t): (o, t) for (n, t) in after for (o, u) in before
               if t == u and (n, t) not in before and n.endswith("." + o)}
    after = {renamed.get(k, k): r for k, r in after.items()}
    lines = [f"# Bench comparison: {old_label} -> {new_label}", "",
             f"ratio = new median / old median; band = max({noise:.0%}, spread old + spread new), spread = "
             "(p75 - p25)/median; SLOWER where ratio > 1 + band, faster where ratio < 1 - band.", "",
             "| case | impl | old ms | new ms | ratio | band | vs torch old -> new | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    slower = 0
    for key in [k for k in before if k in after]:
        a, b = before[key], after[key]
        ratio = b["median_s"] / a["median_s"]
        band = max(noise, _spread(a) + _spread(b))
        verdict = "SLOWER" if ratio > 1 + band else "faster" if ratio < 1 - band else "within noise"
        slower += verdict == "SLOWER"
        vs = "-"
        if a.get("ratio_to_torch") and b.get("ratio_to_torch"):
            vs = f"{a['ratio_to_torch']:.2f} -> {b['ratio_to_torch']:.2f}"
            if verdict == "SLOWER" and b["ratio_to_torch"] <= a["ratio_to_torch"] * (1 + band):
                verdict += " (not against PyTorch: a busier machine?)"
        lines.append(f"| {key[0]} | {key[1]} | {_ms(a['median_s'])} | {_ms(b['median_s'])} | {ratio:.2f} | "
                     f"{band:.0%} | {vs} | {verdict} |")
    lines += ["", f"{slower} slowdown(s) above the noise band." if slower else "No slowdown above the noise band."]
    for side, mine, other in (("old", before, after), ("new", after, before)):
        only = sorted({k[0] for k in mine if k not in other})
        if only:
            lines.append(f"Timed only in the {side} run: {', '.join(only)}.")
    envs = [run.get("environment", {}) for run in (old, new)]
    loads = [e.get("load_average_at_start") for e in envs]
    if any(loads):
        lines.append(f"Load average at start: old {loads[0]}, new {loads[1]} (a busier machine slows every case).")
    return "\n".join(lines) + "\n", slower


def main(paths, noise: float = NOISE_FLOOR) -> int:
    """Print the comparison of two result JSONs; exit status 1 when a case got slower."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    # a run outside a git checkout records commit None
    labels = [f"{Path(p).name} ({(run.get('environment', {}).get('commit') or '?')[:10]})"
              for run, p in zip(runs, paths)]
    text, slower = compare(*runs, *labels, noise=noise)
    print(text, end="")
    return 1 if slower else 0
