"""`POST /api/v1/data/upload`: readings in, 202 only once the broker has stored them."""

from __future__ import annotations

import time

import msgpack
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from robolake.gateway.auth import Role
from robolake.gateway.broker import Broker, BrokerUnavailable
from robolake.gateway.ratelimit import TokenBuckets, retry_after
from robolake.gateway.readings import ReadingBatch, broker_message, message_id

API = "/api/v1"
BROKER_RETRY_AFTER_S = 2


class BatchAccepted(BaseModel):
    batch_id: str
    readings: int
    stream: str
    seq: int
    duplicate: bool


def _error(status: int, detail, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def _schema_ref() -> dict:
    return {"$ref": "#/components/schemas/ReadingBatch"}


def install(app: FastAPI, broker: Broker | None, max_bytes: int, robot_rate: float,
            tenant_rate: float) -> None:
    # long only by its nested route handlers (each short); they close over the app's state
    per_robot, per_tenant = TokenBuckets(robot_rate), TokenBuckets(tenant_rate)

    @app.post(
        f"{API}/data/upload", tags=["streaming"], status_code=202, response_model=BatchAccepted,
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": _schema_ref()},
            "application/msgpack": {"schema": _schema_ref()}}}},
        responses={401: {"description": "no valid token"},
                   403: {"description": "not a robot key"},
                   413: {"description": f"body over {max_bytes} bytes"},
                   415: {"description": "neither JSON nor msgpack"},
                   422: {"description": "a field is wrong (named in detail)"},
                   429: {"description": "rate limit; see Retry-After"},
                   503: {"description": "broker unavailable; nothing stored; see Retry-After"}})
    async def upload_readings(request: Request, principal: Role("robot")):
        """A batch of the token's robot's readings (JSON or msgpack), published to the
        region's stream; 202 means the broker stored it."""
        if not principal.robot_id:
            return _error(403, "this key has no robot identity; streams are sent with a "
                               "robot key")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            return _error(413, f"body of {declared} bytes is over the {max_bytes}-byte limit; "
                               "send smaller batches")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                return _error(413, f"body is over the {max_bytes}-byte limit; send smaller "
                                   "batches")
        kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
        try:
            if kind in ("application/msgpack", "application/x-msgpack"):
                try:
                    data = msgpack.unpackb(bytes(body), raw=False, strict_map_key=True)
                except (ValueError, msgpack.UnpackException) as exc:
                    return _error(422, [{"loc": ["body"], "type": "parse_error", "msg":
                                         f"malformed {kind} body: {_short(exc)}"}])
                batch = ReadingBatch.model_validate(data)
            elif kind in ("application/json", ""):
                batch = ReadingBatch.model_validate_json(bytes(body))  # parse + validate
            else:
                return _error(415, f"content type {kind!r}: expected application/json or "
                                   "application/msgpack")
        except ValidationError as exc:
            return _error(422, [
                {"loc": ["body", *e["loc"]], "type": e["type"],
                 "msg": (f"malformed {kind or 'application/json'} body: {e['msg']}"
                         if e["type"] == "json_invalid" else e["msg"])}
                for e in exc.errors(include_url=False, include_input=False)])
        robot_key = f"{principal.tenant}/{principal.robot_id}"
        wait = per_robot.take(robot_key)
        if wait:
            return _error(429, f"robot {principal.robot_id} is over {robot_rate:g} batches/s",
                          {"Retry-After": retry_after(wait)})
        wait = per_tenant.take(principal.tenant)
        if wait:
            per_robot.give_back(robot_key)
            return _error(429, f"tenant {principal.tenant} is over {tenant_rate:g} batches/s",
                          {"Retry-After": retry_after(wait)})
        if broker is None:
            return _error(503, "streaming is not configured on this gateway (no broker)",
                          {"Retry-After": "60"})
        payload = broker_message(batch, principal.tenant, principal.identity, time.time_ns())
        try:
            ack = await broker.publish(principal.region or "", payload, message_id(
                principal.tenant, principal.robot_id, batch.batch_id))
        except BrokerUnavailable as exc:
            return _error(503, f"{exc}; nothing was stored, send the batch again",
                          {"Retry-After": str(BROKER_RETRY_AFTER_S)})
        return BatchAccepted(batch_id=batch.batch_id, readings=len(batch.readings),
                             stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate)

    _add_schema(app, ReadingBatch)


def _add_schema(app: FastAPI, model: type[BaseModel]) -> None:
    """Put a model read by hand (not a FastAPI body parameter) into the OpenAPI document."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        doc = original()
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
        app.openapi_schema = doc
        return doc

    app.openapi = openapi
