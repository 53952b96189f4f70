"""The compute engine of the cleaned layer and its Spark session, chosen in one place.

`ROBOLAKE_ENGINE` (local | spark | auto) and `ROBOLAKE_SPARK_MIN_BYTES` reach the step
through `EngineResource` (a `dagster.EnvVar` when set); the SparkSession comes from
dagster-pyspark's `LazyPySparkResource`, which starts Spark only when a step asks for the
session, so a partition that runs on the local engine (the demo's) never starts a JVM.
Embedded, the master is `local[*,4]` (every core; 4 attempts per task); production sets
`ROBOLAKE_SPARK_MASTER=k8s://…` and the executor pod settings (see deploy/README.md).
"""

from __future__ import annotations

import os
import sys

import dagster as dg
from dagster_pyspark import LazyPySparkResource

from robolake.settings import Settings, get_settings


class EngineResource(dg.ConfigurableResource):
    """Which engine cleans a partition: local, spark, or auto (Spark above min bytes)."""

    engine: str = "auto"
    spark_min_bytes: str = str(4 * 1024**3)  # a string so that an EnvVar can set it

    def min_bytes(self) -> int:
        return int(self.spark_min_bytes)


class SparkSessionResource(LazyPySparkResource):
    """dagster-pyspark's lazy PySparkResource: the session starts on first use only."""

    def _init_session(self) -> None:
        # PySpark starts its Python workers with PYSPARK_PYTHON (else `python3` on PATH,
        # which lacks the project's packages), whatever spark.pyspark.python says
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        super()._init_session()


def spark_config(master: str, app_name: str = "robolake") -> dict[str, str]:
    """Spark settings the engine relies on wherever it runs."""
    return {
        "spark.master": master,
        "spark.app.name": app_name,
        # tasks must run the project's interpreter (its venv holds robolake/ and its deps)
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        # on a cluster: attempts per task before the job fails (local mode: local[N,F])
        "spark.task.maxFailures": "4",
        "spark.sql.session.timeZone": "UTC",
    }


def engine_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or get_settings()
    return {
        "engine": EngineResource(engine=settings.resource_value("engine"),
                                 spark_min_bytes=settings.resource_value("spark_min_bytes")),
        "pyspark": SparkSessionResource(spark_config=spark_config(settings.spark_master)),
    }
