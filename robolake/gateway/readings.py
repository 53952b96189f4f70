"""The streamed readings' schema (validated at the gateway) and their broker message."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

EARLIEST_NS = 946_684_800 * 10**9  # 2000-01-01, as the raw layer's plausibility rule
LATEST_NS = 4_102_444_800 * 10**9  # 2100-01-01
TopicName = Annotated[str, Field(pattern=r"^/[A-Za-z0-9_/]{1,100}$")]
TimeNs = Annotated[int, Field(ge=EARLIEST_NS, le=LATEST_NS,
                              description="sensor time, int64 ns since the Unix epoch, UTC")]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImuReading(Strict):
    """sensor_msgs/msg/Imu: m/s² and rad/s."""

    sensor: Literal["imu"]
    ts_ns: TimeNs
    ax: Finite
    ay: Finite
    az: Finite
    gx: Finite
    gy: Finite
    gz: Finite
    topic: TopicName = "/imu/data"


class GpsReading(Strict):
    """sensor_msgs/msg/NavSatFix: degrees and metres; status -1 (no fix) to 2."""

    sensor: Literal["gps"]
    ts_ns: TimeNs
    lat: Annotated[float, Field(ge=-90, le=90, allow_inf_nan=False)]
    lon: Annotated[float, Field(ge=-180, le=180, allow_inf_nan=False)]
    alt: Finite
    status: Annotated[int, Field(ge=-1, le=2)] = 0
    topic: TopicName = "/gps/fix"


Reading = Annotated[ImuReading | GpsReading, Field(discriminator="sensor")]


class ReadingBatch(Strict):
    """A batch of one robot's readings. The robot is the token's; `batch_id` is the message
    id: a batch sent again with the same id is stored once."""

    batch_id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
                          description="unique per batch; reuse it when retrying")
    readings: list[Reading] = Field(min_length=1, max_length=10_000)


_READINGS = TypeAdapter(list[Reading])


def broker_message(batch: ReadingBatch, tenant: str, identity: dict[str, str],
                   received_ns: int) -> bytes:
    """What the stream writer receives: the token's identity around the readings (the
    readings serialised by pydantic-core, the hot path of the gateway)."""
    head = json.dumps({"v": 1, "tenant": tenant, **identity, "batch_id": batch.batch_id,
                       "received_ns": received_ns}, separators=(",", ":")).encode()
    return head[:-1] + b',"readings":' + _READINGS.dump_json(batch.readings) + b"}"


def message_id(tenant: str, robot_id: str, batch_id: str) -> str:
    return f"{tenant}/{robot_id}/{batch_id}"
