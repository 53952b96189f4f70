"""Object stores for the landing zone and the lake: a local folder or an S3 prefix.

Both expose the same small interface (list, read, write, copy a local file in,
give a local path for readers that need one) plus what deltalake needs to open
a table at a key (`table_uri`, `delta_options`). Everything above this module
works on keys relative to the store's root, so S3 works the same as a folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store root, '/'-separated
    size: int
    mtime_ns: int  # last modification (arrival) time
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    is_symlink: bool = False  # local folders only: never followed
    storage_class: str = field(default="", compare=False)  # S3 only: STANDARD, GLACIER, …


class Store(Protocol):
    uri: str

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> None: ...
    def put_file(self, local_path: Path, key: str) -> None: ...
    def local_path(self, key: str) -> contextlib.AbstractContextManager[Path]: ...
    def delete(self, key: str) -> bool: ...
    def table_uri(self, key: str) -> str: ...
    @property
    def delta_options(self) -> dict[str, str]: ...


class LocalStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._path(prefix)
        if not base.exists():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                st = path.lstat()  # a link's own times: its target may lie anywhere
                yield ObjectInfo(path.relative_to(self.root).as_posix(), st.st_size,
                                 st.st_mtime_ns, is_symlink=path.is_symlink())

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename so a reader never sees half a file
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)

    def put_file(self, local_path: Path, key: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        shutil.copyfile(local_path, tmp)
        tmp.replace(path)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        yield self._path(key)

    def delete(self, key: str) -> bool:
        """Remove one object (an erase); False if it was not there."""
        try:
            self._path(key).unlink()
            return True
        except FileNotFoundError:
            return False

    def table_uri(self, key: str) -> str:
        return str(self._path(key))

    @property
    def delta_options(self) -> dict[str, str]:
        return {}


def s3_options_from_env() -> dict[str, str]:
    """deltalake/object_store options taken from the standard AWS variables."""
    opts: dict[str, str] = {}
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_REGION"):
        if os.environ.get(name):
            opts[name] = os.environ[name]
    opts.setdefault("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    if opts.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        opts["AWS_ALLOW_HTTP"] = "true"
    return opts


class S3Store:
    """An s3:// prefix. `client` is a boto3 S3 client (the Dagster code location passes the
    one from dagster-aws's S3Resource); without one it is built from `options`."""

    def __init__(self, uri: str, options: dict[str, str] | None = None, client=None):
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"expected an s3://bucket/prefix URI, got {uri!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        # deltalake's object store takes the same endpoint and credentials as options
        self._options = dict(options) if options is not None else s3_options_from_env()
        self.client = client if client is not None else self._boto3_client()

    def _boto3_client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self._options.get("AWS_ENDPOINT_URL"),
            aws_access_key_id=self._options.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=self._options.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=self._options.get("AWS_SESSION_TOKEN"),
            region_name=self._options.get("AWS_REGION"),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1:] if self.prefix else full_key

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        # list "folders": a prefix always ends with '/' so "raw" never matches "raw2/"
        full_prefix = "/".join(part for part in (self.prefix, prefix.strip("/")) if part)
        full_prefix = full_prefix + "/" if full_prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for obj in page.get("Contents", []):
                yield ObjectInfo(self._rel(obj["Key"]), obj["Size"],
                                 int(obj["LastModified"].timestamp() * 1e9),
                                 storage_class=obj.get("StorageClass", "STANDARD"))

    def head_metadata(self, key: str) -> dict[str, str]:
        """User metadata set at upload (x-amz-meta-*), e.g. robot identity."""
        return self.client.head_object(Bucket=self.bucket, Key=self._key(key)).get("Metadata", {})

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def read_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, local_path: Path, key: str) -> None:
        self.client.upload_file(str(local_path), self.bucket, self._key(key))

    def delete(self, key: str) -> bool:
        """Remove one object (an erase); False if it was not there."""
        if not self.exists(key):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        return True

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        # Readers (rosbags, pyulog, mcap's seeking reader) want a seekable local file.
        with tempfile.TemporaryDirectory(prefix="robolake-") as tmp:
            path = Path(tmp) / Path(key).name
            self.client.download_file(self.bucket, self._key(key), str(path))
            yield path

    def table_uri(self, key: str) -> str:
        return f"{self.uri}/{key}"

    @property
    def delta_options(self) -> dict[str, str]:
        return dict(self._options)


def delete_key(store: Store, key: str) -> None:
    """Remove one object (missing is fine): retention and checkpoint pruning."""
    if isinstance(store, LocalStore):
        (store.root / key).unlink(missing_ok=True)
    elif isinstance(store, S3Store):
        store.client.delete_object(Bucket=store.bucket, Key=store._key(key))
    else:
        raise TypeError(f"cannot delete {key} from {type(store).__name__}")


def open_store(uri: str | Path, options: dict[str, str] | None = None,
               s3_client=None) -> Store:
    """A store for a local folder (created if missing) or an s3:// prefix (through
    `s3_client`, a boto3 S3 client, when given)."""
    text = str(uri)
    if text.startswith("s3://"):
        return S3Store(text, options, client=s3_client)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"unsupported storage URI {text!r}: use a folder or s3://bucket/prefix")
    path = Path(text.removeprefix("file://"))
    path.mkdir(parents=True, exist_ok=True)
    return LocalStore(path)
