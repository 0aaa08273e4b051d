"""The benchmark suite from a source checkout: python bench/run.py --help
(the same as python -m gpunet.bench)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpunet.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
