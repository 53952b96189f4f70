"""Declarative automation, set once: the condition the downstream layers follow and the
sensor that evaluates it.

`after_deps_update` is `AutomationCondition.eager()` without its "latest time window only"
clause: eager alone ignores every daily partition but the newest, so a raw partition of an
earlier day materialized from the UI (or `dagster job launch -j ingest_through_raw`) was never
cleaned. Partitions whose upstream was never materialized are not requested.

`automation_sensor` keeps the name Dagster gives its default sensor and replaces it, so the
condition is evaluated from the first `make ui` on (the default sensor starts stopped).
"""

from __future__ import annotations

import dagster as dg

AUTOMATION_SENSOR = "default_automation_condition_sensor"

after_deps_update = dg.AutomationCondition.eager().without(
    dg.AutomationCondition.in_latest_time_window()).with_label("eager (any partition)")

automation_sensor = dg.AutomationConditionSensorDefinition(
    AUTOMATION_SENSOR,
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Cleans a raw partition materialized on its own and scores a cleaned one "
                "(eager automation on the cleaned and feature layers, every partition).",
)
