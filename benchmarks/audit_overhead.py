"""What auditing every lake write costs: ingest + clean a simulated fleet day with the
audit log on and off (ROBOLAKE_AUDIT), alternating, best of N each, in one run; and the
time of one audit append and of verifying the chain."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from robolake import cleaned, raw
from robolake.governance import audit
from robolake.simulate import simulate_fleet
from robolake.storage import open_store
from robolake.tables import read_table

TRIALS = int(sys.argv[1]) if len(sys.argv) > 1 else 3


def ingest(base: Path, name: str) -> float:
    lake = open_store(base / name)
    started = time.perf_counter()
    for part in raw.ingest_landing(open_store(base / "landing"), lake):
        cleaned.clean_partition(lake, *part)
    return time.perf_counter() - started


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="robolake-audit-bench-"))
    try:
        simulate_fleet(base / "landing", robots=4, date="2026-11-20", minutes=0.5, seed=1,
                       robot_types=("delivery", "warehouse_amr"))
        times: dict[str, list[float]] = {"off": [], "on": []}
        for trial in range(TRIALS):
            for mode in ("off", "on"):
                os.environ["ROBOLAKE_AUDIT"] = mode
                times[mode].append(ingest(base, f"lake-{mode}-{trial}"))
        entries = read_table(open_store(base / "lake-on-0"), audit.AUDIT).num_rows
        best = {m: min(v) for m, v in times.items()}
        print(f"ingest+clean, 4 robots x 30 s: audit off {best['off']:.2f} s, on "
              f"{best['on']:.2f} s (+{best['on'] - best['off']:.2f} s for {entries} audited "
              f"commits, {1000 * (best['on'] - best['off']) / entries:.0f} ms each); best of "
              f"{TRIALS}")
        lake = open_store(base / "chain")
        started = time.perf_counter()
        for i in range(200):
            audit.record(lake, "read", f"t/{i}")
        append_ms = 1000 * (time.perf_counter() - started) / 200
        started = time.perf_counter()
        verdict = audit.verify(lake)
        print(f"audit append: {append_ms:.0f} ms each (200, one process); verify of "
              f"{verdict.entries} entries: {time.perf_counter() - started:.2f} s, ok={verdict.ok}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
