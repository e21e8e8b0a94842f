"""Seed a catalog with a big synthetic load (tests/peers/seed.py), for a benchmark by hand.

.venv/bin/python bench/seed.py sqlite:////tmp/big.db --transfers 1000000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peers.seed import seed  # noqa: E402

from ecpds.core.db import open_catalog  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="catalog URL, e.g. sqlite:////tmp/big.db")
    parser.add_argument("--destinations", type=int, default=1_000)
    parser.add_argument("--transfers", type=int, default=1_000_000)
    args = parser.parse_args()
    engine = open_catalog(args.url)
    began = time.perf_counter()
    seed(engine, destinations=args.destinations, transfers=args.transfers)
    print(f"seeded in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
