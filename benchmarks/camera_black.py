"""The camera black-frame check per frame: libjpeg-turbo's 1/8-scale decode of every frame
(`jpeg_levels`, brightness on) against the DC walker with the decode as fallback
(robolake/jpegdc.py, the default), paired runs on the same frames, median of the pairs.

Frames: the simulator's 64x48 camera (daylight) and all black (the walker reads the whole
small scan and decides), and 1280x720 renderings of the same camera by day, at dusk
(levels / 8: only the sky is brighter than 16), at night (levels / 24: no block is) and all
black (at night and black the walker gives up after its budget; the full decode decides).

Usage: python benchmarks/camera_black.py [--pairs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robolake.decode import BLACK_MAX_LEVEL, jpeg_levels  # noqa: E402
from robolake.jpegdc import BlackCheck  # noqa: E402
from robolake.simulate.camera import Camera, jpeg  # noqa: E402
from robolake.simulate.motion import Trajectory  # noqa: E402
from robolake.simulate.robots import profile_of  # noqa: E402


def frames(size: tuple[int, int], n: int, scale: float = 1.0) -> list[bytes]:
    rng = np.random.default_rng(1)
    camera = Camera(rng, Trajectory(rng, profile_of("delivery"), 600.0), size)
    pixels = camera.pixels(np.linspace(0, 600, n))
    return [jpeg((p * scale).astype(np.uint8)) for p in pixels]


def today(frame: bytes) -> bool:
    return bool(jpeg_levels(frame)[2].max() <= BLACK_MAX_LEVEL)


def walker(check: BlackCheck):
    def run(frame: bytes) -> bool:
        known = check.decide(frame)
        if known is not None:
            return known[2]
        width, height, levels = jpeg_levels(frame)
        black = bool(levels.max() <= BLACK_MAX_LEVEL)
        check.confirm(frame, width, height, black)
        return black
    return run


def per_frame_us(fn, batch: list[bytes]) -> float:
    t0 = time.perf_counter()
    for frame in batch:
        fn(frame)
    return (time.perf_counter() - t0) / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    sets = {"64x48 simulator (day)": frames((64, 48), 600),
            "1280x720 day": frames((1280, 720), 12),
            "1280x720 dusk (/8)": frames((1280, 720), 12, 1 / 8),
            "1280x720 night (/24)": frames((1280, 720), 12, 1 / 24),
            "1280x720 black": [jpeg(np.zeros((720, 1280, 3), np.uint8))] * 12,
            "64x48 black": [jpeg(np.zeros((48, 64, 3), np.uint8))] * 600}
    print(f"{'frames':<24}{'decode us':>11}{'walker us':>11}{'ratio':>8}  decided early")
    for name, batch in sets.items():
        new = walker(BlackCheck(BLACK_MAX_LEVEL))
        assert [today(f) for f in batch] == [new(f) for f in batch]  # same flags; admits
        check = BlackCheck(BLACK_MAX_LEVEL)
        walker(check)(batch[0])
        early = sum(check.decide(f) is not None for f in batch) / len(batch)
        pairs = [(per_frame_us(today, batch), per_frame_us(new, batch))
                 for _ in range(args.pairs)]
        a, b = (statistics.median(p[i] for p in pairs) for i in (0, 1))
        ratio = statistics.median(p[0] / p[1] for p in pairs)
        print(f"{name:<24}{a:>11.1f}{b:>11.1f}{ratio:>7.1f}x  {early:.0%}")


if __name__ == "__main__":
    main()
