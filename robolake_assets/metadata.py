"""Asset metadata people can read: counts named for what they are, rounded figures, no
placeholder values.

- `count_metadata`: the cleaning rule counts of `robolake.cleaned` are totals (`imu_samples`:
  decoded), removals (`imu_duplicates`, `gps_invalid`, `*_overlap` …) or flags
  (`camera_black`); each gets its prefix (`decoded_`, `removed_`, `flagged_`).
- `figure`: a float rounded to 4 significant digits (0.3333, 60.16), what the UI shows and plots.
- `without_blanks`: drops entries with no value (None, "", -1 versions) instead of showing
  an empty cell or a made-up number.
"""

from __future__ import annotations

import math

TOTALS = ("imu_samples", "gps_fixes", "lidar_frames", "camera_frames")
FLAGS = ("camera_black",)


def count_metadata(counts: dict[str, int]) -> dict[str, int]:
    out = {}
    for name, value in sorted(counts.items()):
        prefix = "decoded" if name in TOTALS else "flagged" if name in FLAGS else "removed"
        out[f"{prefix}_{name}"] = int(value)
    return out


def figure(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits (NaN and 0 unchanged)."""
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


def figures(values: dict[str, float]) -> dict[str, float]:
    return {k: figure(v) for k, v in values.items()}


def without_blanks(metadata: dict) -> dict:
    """The entries that hold a value: no None, empty string or -1 placeholder."""
    return {k: v for k, v in metadata.items() if v is not None and v != "" and v != -1}
