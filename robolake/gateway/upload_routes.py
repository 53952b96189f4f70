"""`/api/v1/uploads`: presigned multipart uploads into the landing zone."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from robolake.gateway.auth import Role
from robolake.gateway.uploads import MAX_FILE_BYTES, MAX_PARTS, UploadError, Uploads

API = "/api/v1"
UploadId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="the gateway's upload id")]
IDENTITY_KEYS = {"robot_id", "robot_type", "region", "robot-id", "robot-type"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateUpload(Strict):
    file_name: str = Field(min_length=1, max_length=200, examples=["r-1_20261127.mcap"],
                           description="a plain file name ending in .mcap, .bag or .ulg")
    size_bytes: int = Field(gt=0, le=MAX_FILE_BYTES)
    part_size_bytes: int | None = Field(default=None, gt=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="the whole file's SHA-256, kept with the upload")
    metadata: dict[str, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=32,
        description="free-form labels; robot identity comes from the token and is refused here")

    @field_validator("metadata")
    @classmethod
    def no_identity(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in value if k.lower() in IDENTITY_KEYS)
        if bad:
            raise ValueError(f"{', '.join(bad)}: the robot identity comes from the token, "
                             "not the request")
        return value


class PartUrl(BaseModel):
    part_number: int
    url: str
    method: str
    size_bytes: int
    expires_at: int


class UploadCreated(BaseModel):
    upload_id: str
    landing_key: str
    backend: str
    part_size_bytes: int
    part_count: int
    parts: list[PartUrl]


class PartNumbers(Strict):
    part_numbers: list[Annotated[int, Field(ge=1, le=MAX_PARTS)]] = Field(
        min_length=1, max_length=MAX_PARTS)


class CompletedPart(Strict):
    part_number: int = Field(ge=1, le=MAX_PARTS)
    etag: str = Field(min_length=1, max_length=80)


class CompleteUpload(Strict):
    parts: list[CompletedPart] = Field(min_length=1, max_length=MAX_PARTS)


class UploadedPart(BaseModel):
    part_number: int
    etag: str
    size_bytes: int


class RawVerdict(BaseModel):
    content_sha256: str
    status: str
    quality_score: float | None
    reasons: list[str]
    date: str | None
    robot_id: str | None
    robot_type: str | None
    region: str | None
    identity_source: str | None


class UploadStatus(BaseModel):
    upload_id: str
    status: str = Field(description="uploading, aborted, completed (waiting for the raw "
                                    "layer) or indexed (the raw layer's verdict is in "
                                    "`verdict`)")
    landing_key: str
    file_name: str
    size_bytes: int
    part_count: int
    robot_id: str
    robot_type: str
    region: str
    parts_uploaded: list[UploadedPart]
    verdict: RawVerdict | None


def _refusal(exc: UploadError) -> JSONResponse:
    return JSONResponse({"detail": exc.reason}, status_code=exc.status)


_ERRORS = {401: {"description": "no valid token"}, 403: {"description": "role or key may "
           "not upload"}, 404: {"description": "no such upload for this key"},
           422: {"description": "a field is wrong (named in detail)"}}


def install(app: FastAPI, uploads: Uploads, lake: str, public_url: str | None = None) -> None:
    _install_part_routes(app, uploads, public_url)
    _install_upload_routes(app, uploads, lake)


def _install_part_routes(app: FastAPI, uploads: Uploads, public_url: str | None) -> None:
    # long only by its nested route handlers (each short); they close over the app's state
    """Opening an upload, its part URLs and the parts' bytes."""

    def base(request: Request) -> str:
        return public_url or str(request.base_url)

    @app.post(f"{API}/uploads", tags=["uploads"], status_code=201, response_model=UploadCreated,
              responses={**_ERRORS, 413: {"description": "file larger than 100 GiB"}})
    def create_upload(body: CreateUpload, request: Request, principal: Role("robot")):
        """Open a multipart upload; the response holds a signed, expiring URL per part."""
        try:
            s = uploads.create(principal, body.file_name, body.size_bytes,
                               body.part_size_bytes, {**body.metadata,
                                                      **({"sha256": body.sha256}
                                                         if body.sha256 else {})})
            urls = uploads.part_urls(s, base(request), list(range(1, s.part_count + 1)))
        except UploadError as exc:
            return _refusal(exc)
        return UploadCreated(upload_id=s.upload_id, landing_key=s.landing_key,
                             backend=s.backend, part_size_bytes=s.part_size,
                             part_count=s.part_count, parts=[PartUrl(**u) for u in urls])

    @app.post(f"{API}/uploads/{{upload_id}}/urls", tags=["uploads"],
              response_model=list[PartUrl], responses=_ERRORS)
    def fresh_part_urls(upload_id: UploadId, body: PartNumbers, request: Request,
                        principal: Role("robot")):
        """New URLs for some parts (to resume after the first ones expired)."""
        try:
            s = uploads.visible(upload_id, principal)
            if s.status != "uploading":
                raise UploadError(409, f"upload {upload_id} is {s.status}")
            return uploads.part_urls(s, base(request), body.part_numbers)
        except UploadError as exc:
            return _refusal(exc)

    @app.put(f"{API}/uploads/{{upload_id}}/parts/{{part_number}}", tags=["uploads"],
             status_code=200,
             responses={400: {"description": "Content-MD5 does not match"},
                        403: {"description": "bad or expired signature"},
                        404: {"description": "no such upload"},
                        409: {"description": "upload already completed"},
                        413: {"description": "part larger than announced"},
                        422: {"description": "part shorter than announced"}})
    async def put_part(upload_id: UploadId, request: Request,
                       part_number: Annotated[int, Path(ge=1, le=MAX_PARTS)],
                       expires: Annotated[int, Query(ge=0, le=2**62)],
                       signature: Annotated[str, Query(pattern=r"^[0-9a-f]{64}$")],
                       content_md5: Annotated[str | None, Header()] = None):
        """A part's bytes, authorised by the URL's signature (local landing only; with S3
        the URLs point at S3 itself). The ETag is the part's MD5, as S3's."""
        try:
            s = uploads.check_part_url(upload_id, part_number, expires, signature)
            part = uploads.open_part(s, part_number)
            try:
                async for chunk in request.stream():
                    part.write(chunk)
            except BaseException:
                part.abort()
                raise
            etag = part.finish(content_md5)
        except UploadError as exc:
            return _refusal(exc)
        return Response(status_code=200, headers={"ETag": f'"{etag}"'})


def _install_upload_routes(app: FastAPI, uploads: Uploads, lake: str) -> None:
    """Completing, aborting and asking after an upload."""

    @app.post(f"{API}/uploads/{{upload_id}}/complete", tags=["uploads"],
              response_model=UploadStatus, responses={**_ERRORS, 409: {"description": "aborted"}})
    def complete_upload(upload_id: UploadId, body: CompleteUpload, principal: Role("robot")):
        """Assemble the parts into the landing zone with the token's identity."""
        try:
            s = uploads.visible(upload_id, principal)
            s = uploads.complete(s, [(p.part_number, p.etag) for p in body.parts])
        except UploadError as exc:
            return _refusal(exc)
        return _status(uploads, lake, s)

    @app.delete(f"{API}/uploads/{{upload_id}}", tags=["uploads"], response_model=UploadStatus,
                responses={**_ERRORS, 409: {"description": "already completed"}})
    def abort_upload(upload_id: UploadId, principal: Role("robot")):
        """Abandon an unfinished upload: its parts are deleted, its URLs stop working."""
        try:
            s = uploads.abort(uploads.visible(upload_id, principal))
        except UploadError as exc:
            return _refusal(exc)
        return _status(uploads, lake, s)

    @app.get(f"{API}/uploads/{{upload_id}}", tags=["uploads"], response_model=UploadStatus,
             responses=_ERRORS)
    def upload_status(upload_id: UploadId,
                      principal: Role("robot", "engineer", "auditor")):
        """Where an upload stands, and the raw layer's verdict and reasons once indexed."""
        try:
            s = uploads.visible(upload_id, principal)
        except UploadError as exc:
            return _refusal(exc)
        return _status(uploads, lake, s)


def _status(uploads: Uploads, lake: str, s) -> UploadStatus:
    verdict = uploads.verdict(lake, s)
    return UploadStatus(
        upload_id=s.upload_id, status="indexed" if verdict else s.status,
        landing_key=s.landing_key, file_name=s.file_name, size_bytes=s.size_bytes,
        part_count=s.part_count, robot_id=s.robot_id, robot_type=s.robot_type, region=s.region,
        parts_uploaded=[UploadedPart(**p) for p in uploads.uploaded_parts(s)],
        verdict=RawVerdict(**verdict) if verdict else None)
