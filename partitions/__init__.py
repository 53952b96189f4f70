"""Partition definitions shared by the asset layers."""

from __future__ import annotations

import dagster as dg

from robolake.settings import get_settings

# Robot types are discovered from uploads; the sensor and `robolake ingest` add them.
robot_type_partitions = dg.DynamicPartitionsDefinition(name="robot_type")

# end_offset=1: today's partition exists while robots are still uploading today.
daily_partitions = dg.DailyPartitionsDefinition(start_date=get_settings().partitions_start,
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
