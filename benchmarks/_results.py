"""Where a benchmark's figures go: ``benchmarks/results/<name>_<date>.txt``, and the terminal."""

from __future__ import annotations

import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def save(name: str, lines: list[str]) -> Path:
    """Write ``lines`` to today's results file of benchmark ``name``, print them and say where."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}_{time.strftime('%Y-%m-%d')}.txt"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
    return out
