"""The freshness SLA as a Dagster check: the cleaned layer is never more than
`ROBOLAKE_FRESHNESS_MAX_LAG_S` (default 1 h) behind the landing zone.

`cleaned_freshness` is an asset check on `cleaned_quality_reports` (the table every cleaned
upload reports into): it measures the age of the oldest landing file still waiting for the
cleaned layer (`robolake.freshness.cleaned_lag`) and fails, with ERROR severity, past the SLA;
its metadata (lag, files waiting, the oldest one) plots in the UI's check history. The
schedule `cleaned_freshness_schedule` (on by default) evaluates it every 10 minutes; a
breach is also sent to the notification channels (robolake_sensors.notifications).
"""

from __future__ import annotations

import dagster as dg

from robolake.freshness import cleaned_lag
from robolake.settings import get_settings
from robolake_assets.metadata import figure
from robolake_resources import pools
from robolake_resources.lake import LakeResource, LandingResource

CHECK_NAME = "freshness"


@dg.asset_check(asset="cleaned_quality_reports", name=CHECK_NAME,
                description="The cleaned layer is at most ROBOLAKE_FRESHNESS_MAX_LAG_S (default "
                            "1 h) behind the landing zone: no landing file waits longer",
                **pools.cpu_spot())  # a step like any other: its pool, node selector, retries
def cleaned_freshness(landing: LandingResource, lake: LakeResource) -> dg.AssetCheckResult:
    limit = get_settings().freshness_max_lag_s
    with pools.retry_only_transient():  # a bad lake or landing setting fails at once
        lag = cleaned_lag(landing.store(), lake.store())
    metadata = {"lag_s": figure(lag.seconds), "max_lag_s": limit, "files_waiting": lag.waiting}
    if lag.waiting:
        metadata |= {"oldest_file": lag.oldest_key, "oldest_partition": lag.oldest_partition}
    return dg.AssetCheckResult(passed=not lag.breached(limit), metadata=metadata,
                               severity=dg.AssetCheckSeverity.ERROR,
                               description=f"{lag.waiting} file(s) waiting, the oldest for "
                                           f"{lag.seconds:.0f} s (SLA {limit:.0f} s)")


freshness_job = dg.define_asset_job(
    "cleaned_freshness", selection=dg.AssetSelection.checks(cleaned_freshness),
    description="Evaluate the cleaned layer's freshness SLA against the landing zone.")

freshness_schedule = dg.ScheduleDefinition(
    name="cleaned_freshness_schedule", job=freshness_job, cron_schedule="*/10 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every 10 minutes: is the cleaned layer within its SLA of the landing zone?")
