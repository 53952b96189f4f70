"""Offline uploads: multipart sessions whose parts go straight to storage.

S3 landing: the gateway opens an S3 multipart upload with the token's identity as object
metadata (`x-amz-meta-robot-id`, `-robot-type`, `-region`, which the raw layer reads),
hands out presigned `UploadPart` URLs (1 hour) and completes the upload; the parts never
pass through the gateway. Local landing (the embedded default): the gateway signs its own
expiring part URLs (HMAC), stages parts under `<landing>/.gateway-staging/` (names starting
with '.' are ignored by the raw layer), and on completion assembles the file in the landing
folder beside a `<file>.meta.json` sidecar holding the token's identity, written first so
the file never appears without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from robolake.gateway.auth import Principal
from robolake.gateway.db import Database
from robolake.raw import SIDECAR_SUFFIX, safe_file_name
from robolake.storage import S3Store, Store, open_store

MAX_FILE_BYTES = 100 * 1024**3  # 100 GiB
MAX_PARTS = 10_000  # S3's limit
MIN_S3_PART = 5 * 1024**2  # S3's limit for every part but the last
MIN_LOCAL_PART = 64 * 1024
MAX_PART = 5 * 1024**3
RECORDING_EXTENSIONS = (".mcap", ".bag", ".ulg")
STAGING = ".gateway-staging"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    robot_id TEXT NOT NULL,
    robot_type TEXT NOT NULL,
    region TEXT NOT NULL,
    file_name TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    part_size BIGINT NOT NULL,
    part_count INTEGER NOT NULL,
    landing_key TEXT NOT NULL,
    backend TEXT NOT NULL,
    s3_upload_id TEXT,
    metadata TEXT NOT NULL,
    status TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    completed_ns BIGINT
);
"""


class UploadError(Exception):
    """A refusal with its HTTP status and reason (the route turns it into a response)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class UploadSession:
    upload_id: str
    tenant: str
    key_id: str
    robot_id: str
    robot_type: str
    region: str
    file_name: str
    size_bytes: int
    part_size: int
    part_count: int
    landing_key: str
    backend: str
    s3_upload_id: str | None
    metadata: str
    status: str
    created_ns: int
    completed_ns: int | None

    def part_length(self, number: int) -> int:
        if number < self.part_count:
            return self.part_size
        return self.size_bytes - self.part_size * (self.part_count - 1)

    @property
    def identity(self) -> dict[str, str]:
        return {"robot_id": self.robot_id, "robot_type": self.robot_type, "region": self.region}


def choose_part_size(size: int, requested: int | None, backend: str) -> int:
    minimum = MIN_S3_PART if backend == "s3" else MIN_LOCAL_PART
    if requested is None:
        # 16 MiB parts, larger where 10,000 of them would not cover the file
        requested = max(16 * 1024**2, math.ceil(size / MAX_PARTS / 1024**2) * 1024**2)
    if requested < minimum and requested < size:
        raise UploadError(422, f"part_size_bytes {requested}: expected at least {minimum} "
                               f"for a {backend} landing zone (or the whole file)")
    if requested > MAX_PART:
        raise UploadError(422, f"part_size_bytes {requested}: expected at most {MAX_PART}")
    if math.ceil(size / requested) > MAX_PARTS:
        raise UploadError(422, f"part_size_bytes {requested}: a {size}-byte file would need "
                               f"more than {MAX_PARTS} parts")
    return requested


def check_file_name(name: str) -> None:
    if (not name or "/" in name or "\\" in name or name.startswith(".") or len(name) > 200
            or name != name.strip() or any(ord(c) < 32 for c in name)):
        raise UploadError(422, f"file_name {name!r}: expected a plain file name (no path, "
                               "not hidden, printable, at most 200 characters)")
    if not name.lower().endswith(RECORDING_EXTENSIONS):
        raise UploadError(422, f"file_name {name!r}: expected a recording ending in "
                               f"{', '.join(RECORDING_EXTENSIONS)}")


def landing_key_for(p: Principal, upload_id: str, file_name: str) -> str:
    day = time.strftime("%Y-%m-%d", time.gmtime())
    return (f"uploads/{safe_file_name(p.tenant)}/{p.region}/{safe_file_name(p.robot_id or '')}"
            f"/{day}/{upload_id[:12]}-{file_name}")


class Uploads:
    """Upload sessions (in the gateway's SQLite file) over the landing store."""

    def __init__(self, db: Database, landing: str, secret: bytes, url_ttl_s: float = 3600):
        self.db = db
        self.db.create(_SCHEMA)
        self.landing: Store = open_store(landing)
        self.backend = "s3" if isinstance(self.landing, S3Store) else "local"
        self.secret = secret
        self.url_ttl_s = url_ttl_s
        self._presigner = None
        if isinstance(self.landing, S3Store):
            import boto3
            from botocore.config import Config

            opts = self.landing.delta_options
            # SigV4 presigned URLs (what S3 requires in every region since 2020)
            self._presigner = boto3.client(
                "s3", endpoint_url=opts.get("AWS_ENDPOINT_URL"),
                aws_access_key_id=opts.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=opts.get("AWS_SECRET_ACCESS_KEY"),
                aws_session_token=opts.get("AWS_SESSION_TOKEN"),
                region_name=opts.get("AWS_REGION"),
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    # sessions ---------------------------------------------------------------------------

    def create(self, p: Principal, file_name: str, size: int, part_size: int | None,
               metadata: dict[str, str]) -> UploadSession:
        if not p.robot_id:
            raise UploadError(403, "this key has no robot identity; uploads are made with a "
                                   "robot key (the identity comes from the token)")
        check_file_name(file_name)
        if size <= 0 or size > MAX_FILE_BYTES:
            raise UploadError(422 if size <= 0 else 413,
                              f"size_bytes {size}: expected 1 to {MAX_FILE_BYTES}")
        part = choose_part_size(size, part_size, self.backend)
        upload_id = uuid.uuid4().hex
        key = landing_key_for(p, upload_id, file_name)
        s3_upload_id = None
        if isinstance(self.landing, S3Store):
            # identity set at creation: presigned part URLs cannot change it
            s3_upload_id = self.landing.client.create_multipart_upload(
                Bucket=self.landing.bucket, Key=self.landing._key(key),
                Metadata={"robot-id": p.robot_id, "robot-type": p.robot_type or "",
                          "region": p.region or "", "tenant": p.tenant,
                          "gateway-upload-id": upload_id})["UploadId"]
        session = UploadSession(upload_id, p.tenant, p.key_id, p.robot_id, p.robot_type or "",
                                p.region or "", file_name, size, part, math.ceil(size / part),
                                key, self.backend, s3_upload_id,
                                json.dumps(metadata, sort_keys=True), "uploading",
                                time.time_ns(), None)
        self.db.execute(f"INSERT INTO uploads VALUES ({','.join('?' * 17)})",
                        tuple(session.__dict__.values()))
        return session

    def get(self, upload_id: str) -> UploadSession | None:
        row = self.db.one("SELECT * FROM uploads WHERE upload_id = ?", (upload_id,))
        return UploadSession(*row) if row else None

    def visible(self, upload_id: str, p: Principal) -> UploadSession:
        """The session if this principal may see it: its robot, or people of its tenant."""
        s = self.get(upload_id)
        if s is None or s.tenant != p.tenant or (p.role == "robot" and s.robot_id != p.robot_id):
            raise UploadError(404, f"no upload {upload_id!r} for this key")
        return s

    # part URLs --------------------------------------------------------------------------

    def _signature(self, upload_id: str, number: int, expires: int) -> str:
        msg = f"{upload_id}:{number}:{expires}".encode()
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    def part_urls(self, s: UploadSession, base_url: str, numbers: list[int]) -> list[dict]:
        expires = int(time.time() + self.url_ttl_s)
        urls = []
        for n in numbers:
            if not 1 <= n <= s.part_count:
                raise UploadError(422, f"part_numbers: {n} is not a part of this upload "
                                       f"(1..{s.part_count})")
            if isinstance(self.landing, S3Store):
                url = self._presigner.generate_presigned_url(
                    "upload_part", ExpiresIn=int(self.url_ttl_s),
                    Params={"Bucket": self.landing.bucket, "Key": self.landing._key(
                        s.landing_key), "UploadId": s.s3_upload_id, "PartNumber": n})
            else:
                url = (f"{base_url.rstrip('/')}/api/v1/uploads/{s.upload_id}/parts/{n}"
                       f"?expires={expires}&signature={self._signature(s.upload_id, n, expires)}")
            urls.append({"part_number": n, "url": url, "method": "PUT",
                         "size_bytes": s.part_length(n), "expires_at": expires})
        return urls

    def check_part_url(self, upload_id: str, number: int, expires: int,
                       signature: str) -> UploadSession:
        good = self._signature(upload_id, number, expires)
        if not hmac.compare_digest(good.encode(), signature.encode()):
            raise UploadError(403, "part URL signature does not match (tampered or not "
                                   "issued here)")
        if expires < time.time():
            raise UploadError(403, "part URL expired: ask POST /api/v1/uploads/{id}/urls for "
                                   "fresh ones")
        s = self.get(upload_id)
        if s is None:
            raise UploadError(404, f"no upload {upload_id!r}")
        if s.status != "uploading":
            raise UploadError(409, f"upload {upload_id} is {s.status}; parts are closed")
        return s

    # local parts ------------------------------------------------------------------------

    def _staging(self, upload_id: str) -> Path:
        return Path(self.landing.uri) / STAGING / upload_id

    def open_part(self, s: UploadSession, number: int) -> PartWriter:
        folder = self._staging(s.upload_id)
        folder.mkdir(parents=True, exist_ok=True)
        return PartWriter(folder, number, s.part_length(number))

    def uploaded_parts(self, s: UploadSession) -> list[dict]:
        if s.status != "uploading":
            return []
        if isinstance(self.landing, S3Store):
            parts, marker = [], 0
            while True:
                page = self.landing.client.list_parts(
                    Bucket=self.landing.bucket, Key=self.landing._key(s.landing_key),
                    UploadId=s.s3_upload_id, PartNumberMarker=marker)
                parts += [{"part_number": p["PartNumber"], "etag": p["ETag"].strip('"'),
                           "size_bytes": p["Size"]} for p in page.get("Parts", [])]
                if not page.get("IsTruncated"):
                    return parts
                marker = page["NextPartNumberMarker"]
        folder = self._staging(s.upload_id)
        parts = []
        for path in sorted(folder.glob(".part-[0-9][0-9][0-9][0-9][0-9]")):
            parts.append({"part_number": int(path.name[6:]), "etag": _md5_file(path),
                          "size_bytes": path.stat().st_size})
        return parts

    # completion -------------------------------------------------------------------------

    def complete(self, s: UploadSession, parts: list[tuple[int, str]]) -> UploadSession:
        if s.status == "completed":
            return s  # a retried complete is answered, not repeated
        if s.status != "uploading":
            raise UploadError(409, f"upload {s.upload_id} is {s.status}")
        numbers = [n for n, _ in parts]
        if numbers != list(range(1, s.part_count + 1)):
            raise UploadError(422, f"parts: expected part numbers 1..{s.part_count} in order, "
                                   f"got {numbers[:20]}")
        etags = {n: e.strip('"').lower() for n, e in parts}
        if isinstance(self.landing, S3Store):
            from botocore.exceptions import ClientError

            try:
                self.landing.client.complete_multipart_upload(
                    Bucket=self.landing.bucket, Key=self.landing._key(s.landing_key),
                    UploadId=s.s3_upload_id, MultipartUpload={"Parts": [
                        {"PartNumber": n, "ETag": f'"{etags[n]}"'} for n in numbers]})
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                raise UploadError(422, f"parts: S3 refused to complete the upload ({code}: "
                                       f"{exc.response.get('Error', {}).get('Message', '')})"
                                  ) from exc
        else:
            self._assemble(s, etags)
        now = time.time_ns()
        self.db.execute("UPDATE uploads SET status = 'completed', completed_ns = ? "
                        "WHERE upload_id = ? AND status = 'uploading'", (now, s.upload_id))
        return self.get(s.upload_id)

    def _assemble(self, s: UploadSession, etags: dict[int, str]) -> None:
        folder = self._staging(s.upload_id)
        paths = []
        for n in range(1, s.part_count + 1):
            path = folder / f".part-{n:05d}"
            if not path.exists():
                raise UploadError(422, f"parts: part {n} was never uploaded")
            if path.stat().st_size != s.part_length(n) or _md5_file(path) != etags[n]:
                raise UploadError(422, f"parts: part {n}'s ETag {etags[n]!r} does not match "
                                       "the bytes received; upload it again")
            paths.append(path)
        target = Path(self.landing.uri) / s.landing_key
        target.parent.mkdir(parents=True, exist_ok=True)
        # the identity first: the recording never appears without its sidecar
        sidecar = Path(f"{target}{SIDECAR_SUFFIX}")
        _write_durably(sidecar, (json.dumps(s.identity, sort_keys=True) + "\n").encode())
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as out:
                for path in paths:
                    with open(path, "rb") as part:
                        while chunk := part.read(1 << 20):
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        for path in paths:
            path.unlink(missing_ok=True)
        try:
            folder.rmdir()
        except OSError:
            pass

    def abort(self, s: UploadSession) -> UploadSession:
        """Drop an unfinished upload's parts (S3: AbortMultipartUpload)."""
        if s.status == "completed":
            raise UploadError(409, f"upload {s.upload_id} is completed; the file is in the "
                                   "landing zone")
        if s.status == "uploading":
            if isinstance(self.landing, S3Store):
                self.landing.client.abort_multipart_upload(
                    Bucket=self.landing.bucket, Key=self.landing._key(s.landing_key),
                    UploadId=s.s3_upload_id)
            else:
                folder = self._staging(s.upload_id)
                for path in folder.glob(".part-*"):
                    path.unlink(missing_ok=True)
                try:
                    folder.rmdir()
                except OSError:
                    pass
            self.db.execute("UPDATE uploads SET status = 'aborted' WHERE upload_id = ? "
                            "AND status = 'uploading'", (s.upload_id,))
        return self.get(s.upload_id)

    # the raw layer's verdict ------------------------------------------------------------

    def verdict(self, lake: str, s: UploadSession) -> dict | None:
        if s.status != "completed":
            return None
        from robolake import raw
        from robolake.tables import read_table

        table = read_table(open_store(lake), raw.RAW_UPLOADS,
                           columns=["upload_id", "status", "quality_score", "reasons", "date",
                                    "robot_id", "robot_type", "region", "identity_source",
                                    "ingested_ns"],
                           filters={"landing_key": s.landing_key})
        if table is None or table.num_rows == 0:
            return None
        row = max(table.to_pylist(), key=lambda r: r["ingested_ns"] or 0)
        return {"content_sha256": row["upload_id"], "status": row["status"],
                "quality_score": row["quality_score"], "reasons": list(row["reasons"] or []),
                "date": row["date"], "robot_id": row["robot_id"],
                "robot_type": row["robot_type"], "region": row["region"],
                "identity_source": row["identity_source"]}


class PartWriter:
    """One part streamed to a temporary file, checked (length, Content-MD5) and renamed into
    place only when whole; its MD5 is the ETag, as S3's."""

    def __init__(self, folder: Path, number: int, expected: int):
        self.number, self.expected, self.written = number, expected, 0
        self.final = folder / f".part-{number:05d}"
        self.tmp = folder / f".part-{number:05d}.{uuid.uuid4().hex[:8]}.tmp"
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish/abort

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.written > self.expected:
            raise UploadError(413, f"part {self.number} is larger than its {self.expected} "
                                   "bytes")
        self.md5.update(chunk)
        self.file.write(chunk)

    def finish(self, content_md5: str | None) -> str:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if self.written != self.expected:
                raise UploadError(422, f"part {self.number} has {self.written} bytes; expected "
                                       f"{self.expected}")
            if (content_md5 is not None
                    and base64.b64encode(self.md5.digest()).decode() != content_md5):
                raise UploadError(400, f"part {self.number}: Content-MD5 does not match the "
                                       "bytes received (BadDigest); send the part again")
            self.tmp.replace(self.final)
        finally:
            self.abort()
        return self.md5.hexdigest()

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _md5_file(path: Path) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            md5.update(chunk)
    return md5.hexdigest()


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)

