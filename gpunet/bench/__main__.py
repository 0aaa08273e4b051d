"""python -m gpunet.bench --help"""
from .cli import main

raise SystemExit(main())
