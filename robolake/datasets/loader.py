"""Stream a dataset version's shards into PyTorch: `load(name, version, split)`.

Order and resumption. A split's samples have a canonical order (shards in
order, samples in file order; with `shuffle=True` the shard order is permuted
per epoch from `seed`). With `world_size` ranks, rank r gets canonical samples
r, r + R, r + 2R, … (its *stream*). `offset` skips the first `offset` samples of
the rank's stream. After that the stream is cut into blocks of `batch_size`
and worker w of W reads blocks w, w + W, …; PyTorch's DataLoader returns
worker results round-robin, so the loader yields the stream in order whatever
the number of workers. Having consumed k samples, a job resumes exactly with
`offset = k` (every sample once per epoch, none twice).

Workers collate their own batches, so decoding and augmentation run in
parallel. Shards are read with `wids` (WebDataset's indexed reader: an mmap and
a scan of the tar headers), so a worker reads only its own samples and a
resumed job seeks straight to its offset instead of parsing what it skips.
Augmentations (LiDAR rotation, camera crop/flip) apply to the train split by
default and are seeded per (seed, epoch, sample), so a resumed run sees the
same augmented samples.
"""

from __future__ import annotations

import json
import math
import mmap
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import simplejpeg
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from wids.wids import IndexedTarSamples

from robolake.datasets.scenarios import SCENARIO_CLASSES
from robolake.datasets.shards import EXT_DTYPE, decode_sample, manifest_key
from robolake.settings import get_settings
from robolake.storage import LocalStore, Store, open_store

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def default_lake() -> Store:
    return open_store(get_settings().lake)


def read_manifest(name: str, version: str, lake: Store | None = None) -> dict:
    lake = lake or default_lake()
    key = manifest_key(name, version)
    if not lake.exists(key):
        raise FileNotFoundError(f"dataset {name} {version}: no manifest at {key} "
                                f"(build it first: robolake ingest --through datasets)")
    return json.loads(lake.read_bytes(key))


def rank_stream_length(total: int, rank: int = 0, world_size: int = 1, offset: int = 0) -> int:
    """Samples a rank's stream holds after `offset` (ranks differ by at most one)."""
    return max(0, len(range(rank, total, world_size)) - offset)


def _local_shards(lake: Store, shards: list[dict]) -> list[str]:
    """Shard paths a tar reader can open; an object-store lake is cached locally once."""
    if isinstance(lake, LocalStore):
        return [str(lake.root / s["key"]) for s in shards]
    cache = get_settings().cache_dir
    paths = []
    for s in shards:
        path = cache / lake.uri.replace("://", "/") / s["key"]
        if not path.exists() or path.stat().st_size != s["bytes"]:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            tmp.write_bytes(lake.read_bytes(s["key"]))
            tmp.replace(path)
        paths.append(str(path))
    return paths


def _read_indexes(lake: Store, shards: list[dict], paths: list[str]) -> list | None:
    """The shards' sample indexes, or None (versions built before indexes, or samples
    with differing members) to read the tars' headers instead."""
    if not all("index" in s for s in shards):
        return None
    tables = [pq.read_table(pa.BufferReader(lake.read_bytes(s["index"]))) for s in shards]
    if not all(ShardIndex.usable(t) for t in tables):
        return None
    return [ShardIndex(path, t) for path, t in zip(paths, tables, strict=True)]


def bev_grid(points: np.ndarray, range_m: float, cells: int) -> np.ndarray:
    """Bird's-eye occupancy (1, cells, cells): share of the points in each x/y cell."""
    grid = np.zeros((cells, cells), dtype=np.float32)
    if len(points):
        ij = np.floor((points[:, :2] + range_m) / (2 * range_m) * cells).astype(np.int64)
        ok = ((ij >= 0) & (ij < cells)).all(axis=1)
        np.add.at(grid, (ij[ok, 0], ij[ok, 1]), 1.0)
        grid /= len(points)
    return grid[None]


class SampleTransform:
    """Tensors from a decoded sample, with the spec's augmentations when `augment`."""

    def __init__(self, spec: dict, augment: bool, seed: int):
        features = spec["features"]
        self.lidar = features.get("lidar")
        self.camera = features.get("camera")
        self.augment = augment
        self.seed = seed

    def __call__(self, sample: dict, index: int, epoch: int) -> dict:
        meta = sample["meta"]
        out: dict = {
            "key": sample["__key__"],
            "upload_id": meta["upload_id"],
            "robot_type": meta["robot_type"],
            "scenario": np.int64(SCENARIO_CLASSES.index(meta["scenario"])),
            "corner_case_score": np.float32(meta["corner_case_score"]),
            "label": sample["label"].copy(),
        }
        for field in ("imu", "gps"):
            if field in sample:
                out[field] = sample[field].astype(np.float32)  # a copy
        out.update(self.sensors(sample.get("lidar"), sample.get("camera"), index, epoch))
        return out

    def sensors(self, points: np.ndarray | None, jpeg: bytes | None, index: int,
                epoch: int) -> dict:
        """The LiDAR grid and camera image of one sample (those the spec has)."""
        rng = np.random.default_rng([self.seed, epoch, index]) if self.augment else None
        out = {}
        if points is not None and self.lidar:
            points = points.astype(np.float32)
            max_deg = self.lidar["augment"]["random_rotation_deg"]
            if self.augment and max_deg > 0:
                a = np.deg2rad(rng.uniform(-max_deg, max_deg))
                c, s = np.cos(a), np.sin(a)
                points[:, :2] = points[:, :2] @ np.array([[c, s], [-s, c]], dtype=np.float32)
            out["lidar"] = bev_grid(points, self.lidar["range_crop_m"], self.lidar["bev_cells"])
        if jpeg is not None and self.camera:
            out["camera"] = self._image(jpeg, rng)
        return out

    def _image(self, jpeg: bytes, rng: np.random.Generator) -> np.ndarray:
        img = simplejpeg.decode_jpeg(jpeg, colorspace="RGB")
        crop = self.camera["augment"]["random_crop"]
        if crop:
            ch, cw = crop[1], crop[0]  # crop is (width, height) like resize
            h, w = img.shape[:2]
            if self.augment:
                y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            else:
                y, x = (h - ch) // 2, (w - cw) // 2
            img = img[y:y + ch, x:x + cw]
        if self.augment and rng.random() < self.camera["augment"]["hflip_probability"]:
            img = img[:, ::-1]
        out = img.astype(np.float32) / 255.0
        if self.camera["normalize"]:
            out = (out - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(out.transpose(2, 0, 1))


class ShardStream(IterableDataset):
    """One rank's stream of a split (see the module docstring for the order)."""

    def __init__(self, paths: list[str], counts: list[int], transform: SampleTransform, *,
                 batch_size: int | None, offset: int, rank: int, world_size: int,
                 epoch: int, shuffle: bool, seed: int, indexes: list[ShardIndex] | None = None):
        self.paths, self.counts, self.transform = paths, counts, transform
        self.indexes = indexes
        self.batch = batch_size or 1
        self.collate = batch_size is not None
        self.offset, self.rank, self.world = offset, rank, world_size
        self.epoch, self.shuffle, self.seed = epoch, shuffle, seed

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        order = list(range(len(self.paths)))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def __len__(self) -> int:
        n = rank_stream_length(sum(self.counts), self.rank, self.world, self.offset)
        return math.ceil(n / self.batch) if self.collate else n

    def _mine(self, start: int, end: int, worker: int, workers: int) -> set[int]:
        """Canonical indices in [start, end) that belong to this rank and worker."""
        first = start + (self.rank - start) % self.world
        mine = set()
        for i in range(first, end, self.world):
            j = i // self.world - self.offset  # position in the rank's stream after offset
            if j >= 0 and (j // self.batch) % workers == worker:
                mine.add(i)
        return mine

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if self.indexes is not None:
            yield from self._iter_indexed(worker, workers)
            return
        batch: list[dict] = []
        start = 0
        for shard in self._order():
            end = start + self.counts[shard]
            mine = self._mine(start, end, worker, workers)
            if mine:
                samples = IndexedTarSamples(path=self.paths[shard],
                                            expected_size=self.counts[shard])
                try:
                    for i in sorted(mine):
                        raw = samples[i - start]
                        raw = {k.lstrip("."): v.getvalue() if k != "__key__" else v
                               for k, v in raw.items()}
                        batch.append(self.transform(decode_sample(raw), i, self.epoch))
                        if len(batch) == self.batch:
                            yield _stack(batch) if self.collate else batch[0]
                            batch = []
                finally:
                    samples.close()
            start = end
        if batch:
            yield _stack(batch) if self.collate else batch[0]

    def _iter_indexed(self, worker: int, workers: int):
        """The same stream through the shards' sample indexes, a batch gathered at once."""
        pending: list[tuple[int, int, int]] = []  # (shard, row in shard, canonical index)
        start = 0
        for shard in self._order():
            end = start + self.counts[shard]
            for i in sorted(self._mine(start, end, worker, workers)):
                pending.append((shard, i - start, i))
                if len(pending) == self.batch:
                    yield self._assemble(pending)
                    pending = []
            start = end
        if pending:
            yield self._assemble(pending)

    def _assemble(self, pending: list[tuple[int, int, int]]) -> dict:
        parts, first = [], 0
        for n in range(1, len(pending) + 1):  # runs of samples from one shard
            if n == len(pending) or pending[n][0] != pending[first][0]:
                run = pending[first:n]
                rows = np.fromiter((r for _, r, _ in run), np.int64, len(run))
                parts.append(self.indexes[run[0][0]].batch(
                    rows, [i for _, _, i in run], self.transform, self.epoch))
                first = n
        batch = parts[0] if len(parts) == 1 else {
            k: sum((p[k] for p in parts), []) if isinstance(v, list)
            else np.concatenate([p[k] for p in parts]) for k, v in parts[0].items()}
        return batch if self.collate else {k: v[0] for k, v in batch.items()}


class ShardIndex:
    """One shard's sample index (see robolake.datasets.shards) and its bytes, mapped lazily
    in the process that reads them (a DataLoader worker)."""

    def __init__(self, path: str, table: pa.Table):
        self.path, self._bytes = path, None
        self.strings = {k: table.column(k).to_pylist() for k in ("key", "upload_id", "robot_type")}
        self.scenario = pc.index_in(table.column("scenario"), pa.array(SCENARIO_CLASSES)
                                    ).to_numpy().astype(np.int64)
        self.score = table.column("corner_case_score").to_numpy().astype(np.float32)
        self.members = {}  # field -> (member, dtype, offsets, sizes, shapes)
        for name in table.column_names:
            member = name.removesuffix("@offset")
            field, _, ext = member.partition(".")
            if member != name and (ext in EXT_DTYPE or ext == "jpg"):
                shapes = (table.column(f"{field}@shape").to_pylist() if ext != "jpg"
                          else None)
                self.members[field] = (EXT_DTYPE.get(ext), table.column(name).to_numpy(),
                                       table.column(f"{member}@size").to_numpy(), shapes)

    @staticmethod
    def usable(table: pa.Table) -> bool:
        """Every sample has every member the first one has (else: the tar reader)."""
        return all(table.column(c).null_count == 0 for c in table.column_names)

    def batch(self, rows: np.ndarray, canonical: list[int], transform: SampleTransform,
              epoch: int) -> dict:
        if self._bytes is None:  # a plain array over the mapping (np.memmap indexes slowly)
            with open(self.path, "rb") as f:
                self._bytes = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ),
                                            np.uint8)
        out: dict = {k: [v[r] for r in rows] for k, v in self.strings.items()}
        out["scenario"], out["corner_case_score"] = self.scenario[rows], self.score[rows]
        for field in ("label", "imu", "gps"):
            if field in self.members:
                out[field] = self._fixed(field, rows)
        points = self._each("lidar", rows) if transform.lidar else None
        jpegs = self._each("camera", rows) if transform.camera else None
        if points or jpegs:
            sensors = [transform.sensors(points[j] if points else None,
                                         jpegs[j] if jpegs else None, i, epoch)
                       for j, i in enumerate(canonical)]
            for field in sensors[0]:
                out[field] = np.stack([s[field] for s in sensors])
        return out

    def _fixed(self, field: str, rows: np.ndarray) -> np.ndarray:
        """One array per row, gathered at once (all rows have the first row's shape)."""
        dtype, offsets, sizes, shapes = self.members[field]
        shape = shapes[rows[0]]
        if any(shapes[r] != shape for r in rows):
            return np.stack(self._each(field, rows))
        raw = self._bytes[offsets[rows][:, None] + np.arange(sizes[rows[0]])]
        return raw.view(dtype).reshape(len(rows), *shape).astype(dtype.newbyteorder("="))

    def _each(self, field: str, rows: np.ndarray) -> list | None:
        if field not in self.members:
            return None
        dtype, offsets, sizes, shapes = self.members[field]
        if dtype is None:  # a JPEG
            return [self._bytes[offsets[r]:offsets[r] + sizes[r]].tobytes() for r in rows]
        return [np.frombuffer(self._bytes, dtype, sizes[r] // dtype.itemsize, offsets[r])
                .reshape(shapes[r]) for r in rows]


def _stack(samples: list[dict]) -> dict:
    """A batch of samples: arrays stacked, strings listed (numpy, see ShardLoader)."""
    return {k: [s[k] for s in samples] if isinstance(v, str) else np.stack([s[k] for s in samples])
            for k, v in samples[0].items()}


def _as_is(item):
    return item


class ShardLoader(DataLoader):
    """A DataLoader whose workers hand over numpy arrays, made tensors here.

    Tensors cross from a worker process through one shared-memory segment each
    (~1 ms apiece, paid while the training loop waits); numpy arrays are pickled
    through the result pipe, several times cheaper for batches of this size.
    """

    def __iter__(self):
        # not a generator: the base iterator (and the seed it draws from torch's RNG) is
        # made now, where training expects it, not at the first batch
        return map(_to_tensors, super().__iter__())


def _to_tensors(item: dict) -> dict:
    return {k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray | np.generic) else v
            for k, v in item.items()}


def load(name: str, version: str, split: str, *, lake: Store | None = None,
         batch_size: int | None = None, num_workers: int = 0, offset: int = 0,
         rank: int = 0, world_size: int = 1, epoch: int = 0, shuffle: bool = False,
         augment: bool | None = None, seed: int = 0) -> DataLoader:
    """A DataLoader over one split of a dataset version (samples, or batches of them).

    Each sample is a dict: `label`, `scenario` (index into SCENARIO_CLASSES),
    `corner_case_score`, `key`, `upload_id`, `robot_type`, and the spec's features
    `imu` (window, 6), `gps` (history, 3), `lidar` (1, cells, cells), `camera` (3, H, W).
    """
    lake = lake or default_lake()
    manifest = read_manifest(name, version, lake)
    if split not in manifest["splits"]:
        raise ValueError(f"dataset {name} {version} has no split {split!r}; it has "
                         f"{', '.join(manifest['splits'])}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    shards = manifest["splits"][split]["shards"]
    transform = SampleTransform(manifest["spec"], split == "train" if augment is None
                                else augment, seed)
    paths = _local_shards(lake, shards)
    stream = ShardStream(paths, [s["samples"] for s in shards], transform,
                         batch_size=batch_size, offset=offset, rank=rank, world_size=world_size,
                         epoch=epoch, shuffle=shuffle, seed=seed,
                         indexes=_read_indexes(lake, shards, paths))
    return ShardLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_as_is,
                       persistent_workers=False, prefetch_factor=4 if num_workers else None)
