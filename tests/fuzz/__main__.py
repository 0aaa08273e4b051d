"""python -m tests.fuzz [--calls N] [--seed S] [--backends cpu,sim] [--json FILE]:
the fuzz suite at length; prints the counts per class and backend, writes
them and every finding to the JSON file, and exits 1 on a crash, a hang or a
silent wrong result, or when unclear errors reach 1% of the calls."""
import argparse
import sys

from . import runner


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--calls", type=int, default=2000, help="calls per backend (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backends", default="cpu,sim")
    p.add_argument("--workers", type=int, default=2, help="worker subprocesses (default 2)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before a call counts as a hang")
    p.add_argument("--json", default="fuzz-report.json", help="where the counts and findings go")
    a = p.parse_args(argv)

    def progress(done, counts):
        if done % 200 == 0:
            print(f"{done} calls: " + ", ".join(f"{b} {dict((k, v) for k, v in c.items() if v)}"
                                                for b, c in counts.items()), file=sys.stderr, flush=True)

    report = runner.run(a.calls, a.seed, tuple(a.backends.split(",")), a.workers, a.timeout, progress=progress)
    runner.write_json(report, a.json)
    print(runner.summary(report))
    print(f"findings written to {a.json}")
    bad = any(c["silent"] + c["hang"] + c["crash"] or c["unclear"] * 100 >= sum(c.values())
              for c in report["counts"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
