"""WebDataset shards of a dataset version: the sample format, writing and reading.

A sample is one aligned LiDAR frame. Its files in the tar (`<key>.<ext>`):

- `meta.json`: upload_id, robot_id, robot_type, region, date, ts_ns, scenario,
  corner_case_score, group, split, and `shapes` of the arrays below
- `imu.f32` (window, 6): ax ay az gx gy gz, z-scored with train statistics
- `gps.f32` (history, 3): east, north, up in metres relative to the frame
- `lidar.f16` (n, 3): voxel-downsampled points inside the range crop
- `camera.jpg`: the nearest camera frame, resized
- `label.f32` (2,) speed m/s and yaw rate rad/s (ego_motion), or `label.i64` () the
  scenario class (scenario; classes in SCENARIO_CLASSES)

Arrays are raw little-endian bytes (the extension names the dtype, `meta.json`
the shape): reading them is a `frombuffer`, where `.npy` headers cost a Python
parse per array, a third of the loader's time.

Shards are written in a canonical order (split, upload_id, ts_ns, copy) so a
version's shards and its manifest can be recomputed and compared.

Each shard has a sample index beside it (`shard-NNNNNN.index.parquet`, named in
the manifest's shard entry as `index`): one row per sample with its key, the
meta fields a loader needs (upload_id, robot_type, scenario, corner_case_score),
and each member's byte offset and size in the tar (`<member>@offset`,
`<member>@size`) and each array's shape (`<field>@shape`). A loader seeks
straight to the bytes and gathers a batch's arrays at once, instead of parsing
tar headers and `meta.json` per sample. It is written once, at build time.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds

from robolake.storage import Store

SHARD_PATTERN = "shard-%06d.tar"
INDEX_SUFFIX = ".index.parquet"
INDEX_META = ("upload_id", "robot_type", "scenario", "corner_case_score")
ARRAY_FIELDS = ("imu", "gps", "lidar", "label")
DTYPE_EXT = {np.dtype("float32"): "f32", np.dtype("float16"): "f16", np.dtype("int64"): "i64"}
EXT_DTYPE = {ext: dtype.newbyteorder("<") for dtype, ext in DTYPE_EXT.items()}


def dataset_prefix(name: str, version: str) -> str:
    return f"datasets/{name}/{version}"


def manifest_key(name: str, version: str) -> str:
    return f"{dataset_prefix(name, version)}/manifest.json"


def encode_sample(key: str, sample: dict) -> dict[str, bytes | str]:
    """The tar members of one sample (raw arrays, meta as JSON, camera as JPEG)."""
    out: dict[str, bytes | str] = {"__key__": key}
    shapes = {}
    for field in ARRAY_FIELDS:
        if field in sample:
            arr = np.asarray(sample[field])
            ext = DTYPE_EXT[arr.dtype]
            out[f"{field}.{ext}"] = arr.astype(EXT_DTYPE[ext], copy=False).tobytes()
            shapes[field] = list(arr.shape)
    if "camera" in sample:
        out["camera.jpg"] = sample["camera"]
    out["meta.json"] = json.dumps({**sample["meta"], "shapes": shapes}, sort_keys=True).encode()
    return out


def decode_sample(raw: dict) -> dict:
    """Inverse of encode_sample on a sample read back from a tar."""
    out: dict = {"__key__": raw["__key__"]}
    meta = json.loads(raw["meta.json"])
    for field, shape in meta.pop("shapes").items():
        ext = next(e for e in EXT_DTYPE if f"{field}.{e}" in raw)
        out[field] = np.frombuffer(raw[f"{field}.{ext}"], dtype=EXT_DTYPE[ext]).reshape(shape)
    if "camera.jpg" in raw:
        out["camera"] = raw["camera.jpg"]
    out["meta"] = meta
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
            index = path.with_name(path.name.removesuffix(".tar") + INDEX_SUFFIX)
            pq.write_table(index_shard(path), index)
            store.put_file(path, key)
            store.put_file(index, f"{prefix}/{index.name}")
            shards.append({"key": key, "samples": n, "bytes": path.stat().st_size,
                           "index": f"{prefix}/{index.name}"})
    return shards


def index_shard(path: str | Path) -> pa.Table:
    """The sample index of one local shard (see the module docstring), in file order."""
    rows: list[dict] = []
    with tarfile.open(path) as tar:
        for member in tar:  # headers only: the data is seeked past
            _, _, ext = member.name.rpartition("/")[2].partition(".")
            key = member.name[:len(member.name) - len(ext) - 1]
            if not rows or rows[-1]["key"] != key:
                rows.append({"key": key})
            rows[-1][f"{ext}@offset"] = member.offset_data
            rows[-1][f"{ext}@size"] = member.size
            if ext == "meta.json":
                tar.fileobj.seek(member.offset_data)
                meta = json.loads(tar.fileobj.read(member.size))
                rows[-1].update({k: meta[k] for k in INDEX_META})
                rows[-1].update({f"{f}@shape": s for f, s in meta["shapes"].items()})
    names = dict.fromkeys(name for r in rows for name in r)  # a member some samples lack: null
    columns = {name: [r.get(name) for r in rows] for name in names} if rows else {"key": []}
    return pa.table(columns)


def iter_shard(path: str | Path) -> Iterator[dict]:
    """Every sample of one local shard, decoded, in file order."""
    for raw in wds.WebDataset(str(path), shardshuffle=False, nodesplitter=None,
                              workersplitter=None, empty_check=False):
        yield decode_sample(raw)
