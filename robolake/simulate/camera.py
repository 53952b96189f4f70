"""The camera: a 90° view into a panorama that pans with the heading, JPEG-compressed."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from robolake.simulate.motion import Trajectory

if TYPE_CHECKING:
    from robolake.simulate.draft import Draft
    from robolake.simulate.ros import Codec


class Camera:
    """A 90° view into a 360° panorama: panning follows heading, shading follows position."""

    def __init__(self, rng: np.random.Generator, traj: Trajectory, size: tuple[int, int]):
        self.w, self.h = int(size[0]), int(size[1])
        self.traj, self.rng = traj, rng
        wp = 4 * self.w
        rows = (np.arange(self.h) / max(self.h - 1, 1))[:, None]
        cols = np.arange(wp)[None, :]
        horizon = 0.5
        sky = np.stack([135 - 40 * rows, 180 - 40 * rows, 235 - 30 * rows], -1)
        ground = np.stack([95 + 0 * rows, 88 + 0 * rows, 80 + 0 * rows], -1)
        ground = ground + 18 * np.sin(2 * np.pi * (cols * 9 / wp + rows * 7))[..., None]
        pano = np.where((rows < horizon)[..., None], sky * np.ones((1, wp, 1)), ground)
        # buildings: column bands with their own height and colour
        edges = np.sort(rng.choice(np.arange(1, wp), size=min(11, wp - 1), replace=False))
        for lo, hi in zip(np.concatenate(([0], edges)), np.concatenate((edges, [wp])), strict=True):
            top = horizon - rng.uniform(0.05, 0.4)
            colour = rng.uniform(40, 220, 3)
            band = (rows >= top) & (rows < horizon)
            stripes = 1 + 0.15 * np.sin(2 * np.pi * np.arange(lo, hi) * 3 / max(self.w, 1))
            pano[:, lo:hi] = np.where(band[..., None], colour * stripes[None, :, None],
                                      pano[:, lo:hi])
        self.pano = pano.astype(np.float32)
        self.wp = wp

    def pixels(self, t: np.ndarray) -> np.ndarray:
        """(F, H, W, 3) uint8 frames for the relative times `t` (seconds)."""
        psi = self.traj.heading(t)
        x, y = self.traj.position(t)
        shift = np.rint(psi / (2 * math.pi) * self.wp).astype(np.int64)
        cols = (np.arange(self.w)[None, :] - shift[:, None]) % self.wp  # (F, W)
        shade = (1.0 + 0.15 * np.sin(x / 9.0) * np.cos(y / 11.0)).astype(np.float32)
        img = np.moveaxis(self.pano[:, cols], 1, 0) * shade[:, None, None, None]
        img += self.rng.integers(-7, 8, img.shape, dtype=np.int16)  # sensor noise
        return np.clip(img, 0, 255).astype(np.uint8)


class Blocks:
    """Frames made in blocks (vectorised), handed out one at a time in increasing order."""

    def __init__(self, make: Callable[[np.ndarray], np.ndarray], t: np.ndarray, size: int = 64):
        self.make, self.t, self.size = make, t, size
        self.first, self.frames = -1, np.zeros(0)

    def __getitem__(self, i: int) -> np.ndarray:
        first = i - i % self.size
        if first != self.first:
            self.first, self.frames = first, self.make(self.t[first:first + self.size])
        return self.frames[i - first]


def jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()


class CameraSource:
    """The recording's camera frames, made in blocks while writing; a fault may black out
    some (`black`: frame indices)."""

    def __init__(self, rec: Draft):
        self.camera = Camera(rec.rngs["camera"], rec.traj, rec.image_size)
        self.t = rec.rel_t["camera"]
        self.black = np.zeros(0, dtype=np.int64)

    def messages(self, codec: Codec, frame_id: str) -> Callable[[int, int], Any]:
        frames = Blocks(self.camera.pixels, self.t)
        black = set(self.black.tolist())
        black_jpeg = (jpeg(np.zeros((self.camera.h, self.camera.w, 3), dtype=np.uint8))
                      if black else b"")

        def message(i: int, stamp: int) -> Any:
            pixels = frames[i]  # always drawn: keeps the noise stream aligned
            return codec.compressed_image(codec.header(stamp, frame_id, i),
                                          black_jpeg if i in black else jpeg(pixels))

        return message
