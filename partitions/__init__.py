"""Partition definitions shared by the asset layers.

Keys are "<YYYY-MM-DD>|<robot type>" (the data contract). The daily dimension starts where
the data does, so the UI's fill rates and per-partition plots mean something: at
ROBOLAKE_PARTITIONS_START when it is set, else at the first date the lake holds (read once
when the code location loads), at most RECENT_DAYS before today. Older data is still
accepted (down to ROBOLAKE_PARTITIONS_START's default, 2015-01-01): `robolake ingest` records
the files before it loads the definitions, so their days exist in its runs; the upload sensor
holds such files until the code location is reloaded (see sensors/uploads.py).
"""

from __future__ import annotations

import datetime as dt
import logging

import dagster as dg

from robolake.settings import Settings, get_settings

RECENT_DAYS = 7  # an empty lake's daily partitions start a week ago

# Robot types are discovered from uploads; the sensor and `robolake ingest` add them.
robot_type_partitions = dg.DynamicPartitionsDefinition(name="robot_type")


def daily_start(settings: Settings, today: dt.date | None = None) -> str:
    """The first day of the daily dimension (see the module's docstring)."""
    if "partitions_start" in settings.env_fields:
        return settings.partitions_start
    recent = ((today or dt.datetime.now(dt.UTC).date())
              - dt.timedelta(days=RECENT_DAYS)).isoformat()
    try:
        from robolake.ingest_plan import first_lake_date
        from robolake.storage import open_store

        first = first_lake_date(open_store(settings.lake))
    except Exception as exc:  # noqa: BLE001 - an unreachable lake must not stop the UI
        logging.getLogger(__name__).warning(
            "daily partitions start %s: cannot read the lake's first date (%s)", recent, exc)
        first = None
    return max(settings.partitions_start, min(recent, first or recent))


# end_offset=1: today's partition exists while robots are still uploading today.
daily_partitions = dg.DailyPartitionsDefinition(start_date=daily_start(get_settings()),
                                                end_offset=1)

# Keys look like "2026-11-27|delivery" (dimensions in alphabetical order).
daily_robot_type_partitions = dg.MultiPartitionsDefinition(
    {"date": daily_partitions, "robot_type": robot_type_partitions}
)


def partition_key(day: str, robot_type: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"date": day, "robot_type": robot_type})


def split_key(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(date, robot_type) of a partition key, also when a run was launched with only the
    `dagster/partition` tag ("2026-11-27|delivery") and Dagster hands over a plain string."""
    keys = daily_robot_type_partitions.get_partition_key_from_str(str(key)).keys_by_dimension
    return keys["date"], keys["robot_type"]


def dataset_version_partitions(dataset_name: str) -> dg.DynamicPartitionsDefinition:
    """One partition per registered version of a dataset ("1.0.0", "1.1.0" …): the model and
    evaluation assets trained on it. The dataset asset adds a version when it registers it."""
    return dg.DynamicPartitionsDefinition(
        name=f"dataset_versions_{dataset_name.replace('-', '_')}")
