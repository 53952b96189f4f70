"""WebDataset shards of a dataset version: the sample format, writing and reading.

A sample is one aligned LiDAR frame. Its files in the tar (`<key>.<ext>`):

- `meta.json`: upload_id, robot_id, robot_type, region, date, ts_ns, scenario,
  corner_case_score, group, split
- `imu.npy` float32 (window, 6): ax ay az gx gy gz, z-scored with train statistics
- `gps.npy` float32 (history, 3): east, north, up in metres relative to the frame
- `lidar.npy` float16 (n, 3): voxel-downsampled points inside the range crop
- `camera.jpg`: the nearest camera frame, resized
- `label.npy` float32 (2,) speed m/s and yaw rate rad/s (ego_motion), or int64 ()
  the scenario class (scenario; classes in SCENARIO_CLASSES)

Shards are written in a canonical order (split, upload_id, ts_ns, copy) so a
version's shards and its manifest can be recomputed and compared.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import webdataset as wds

from robolake.storage import Store

SHARD_PATTERN = "shard-%06d.tar"
ARRAY_FIELDS = ("imu", "gps", "lidar", "label")


def dataset_prefix(name: str, version: str) -> str:
    return f"datasets/{name}/{version}"


def manifest_key(name: str, version: str) -> str:
    return f"{dataset_prefix(name, version)}/manifest.json"


def encode_sample(key: str, sample: dict) -> dict[str, bytes | str]:
    """The tar members of one sample (arrays as .npy, meta as JSON, camera as JPEG)."""
    out: dict[str, bytes | str] = {"__key__": key}
    for field in ARRAY_FIELDS:
        if field in sample:
            buf = io.BytesIO()
            np.save(buf, sample[field], allow_pickle=False)
            out[f"{field}.npy"] = buf.getvalue()
    if "camera" in sample:
        out["camera.jpg"] = sample["camera"]
    out["meta.json"] = json.dumps(sample["meta"], sort_keys=True).encode()
    return out


def decode_sample(raw: dict) -> dict:
    """Inverse of encode_sample on a sample read back from a tar."""
    out: dict = {"__key__": raw["__key__"]}
    for field in ARRAY_FIELDS:
        data = raw.get(f"{field}.npy")
        if data is not None:
            out[field] = np.load(io.BytesIO(data), allow_pickle=False)
    if "camera.jpg" in raw:
        out["camera"] = raw["camera.jpg"]
    out["meta"] = json.loads(raw["meta.json"])
    return out


def write_split(store: Store, prefix: str, samples: Iterable[tuple[str, dict]],
                shard_size_bytes: int) -> list[dict]:
    """Write (key, sample) pairs as tar shards under `prefix/`, rotating at the target size.

    Shards are staged in a local folder and then put into the store, so an S3 lake
    gets whole files only. Returns one {key, samples, bytes} entry per shard.
    """
    counts: list[int] = []
    with tempfile.TemporaryDirectory(prefix="robolake-shards-") as tmp:
        pattern = str(Path(tmp) / SHARD_PATTERN)
        # mtime=0: the same samples give byte-identical shards
        with wds.ShardWriter(pattern, maxsize=shard_size_bytes, maxcount=10**9, verbose=0,
                             mtime=0) as sink:
            for key, sample in samples:
                sink.write(encode_sample(key, sample))
                shard = sink.shard - 1  # the writer has already advanced past the open shard
                counts.extend([0] * (shard + 1 - len(counts)))
                counts[shard] += 1
        shards = []
        for i, n in enumerate(counts):
            path = Path(pattern % i)
            key = f"{prefix}/{path.name}"
            store.put_file(path, key)
            shards.append({"key": key, "samples": n, "bytes": path.stat().st_size})
    return shards


def iter_shard(path: str | Path) -> Iterator[dict]:
    """Every sample of one local shard, decoded, in file order."""
    for raw in wds.WebDataset(str(path), shardshuffle=False, nodesplitter=None,
                              workersplitter=None, empty_check=False):
        yield decode_sample(raw)
