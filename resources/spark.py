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
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from dagster_pyspark import LazyPySparkResource
from dagster_pyspark.resources import spark_session_from_config

from robolake.settings import Settings, get_settings
from robolake_resources.lake import resource_value
from robolake_resources.pools import CPU_SPOT, POOL_LABEL, Pool

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
MAX_EXECUTORS = 32  # per Spark application (one per cleaned step); the Spot pool's cap


class EngineResource(dg.ConfigurableResource):
    """Which engine cleans a partition: local, spark, or auto (Spark above min bytes)."""

    engine: str = "auto"
    spark_min_bytes: str = str(4 * 1024**3)  # a string so that an EnvVar can set it

    def min_bytes(self) -> int:
        return int(self.spark_min_bytes)


class SparkSessionResource(LazyPySparkResource):
    """dagster-pyspark's lazy PySparkResource: the session starts on first use only."""

    def _init_session(self) -> None:
        if self._spark_session is not None:
            return
        # PySpark starts its Python workers with PYSPARK_PYTHON (else `python3` on PATH,
        # which lacks the project's packages), whatever spark.pyspark.python says
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        conf = dict(self.spark_config)
        if str(conf.get("spark.master", "")).startswith("k8s://"):
            conf.update(k8s_driver_config(conf))
        self._spark_session = spark_session_from_config(conf)


# Robolake settings that change what a task computes: the executors' Python workers get
# the driver's values (they do not read the code location's environment)
TASK_SETTINGS = ("ROBOLAKE_CAMERA_BRIGHTNESS",)


def spark_config(master: str, app_name: str = "robolake",
                 image: str | None = None) -> dict[str, str]:
    """Spark settings the engine relies on wherever it runs."""
    return {
        **{f"spark.executorEnv.{k}": os.environ[k] for k in TASK_SETTINGS if k in os.environ},
        "spark.master": master,
        "spark.app.name": app_name,
        # tasks must run the project's interpreter (its venv holds robolake/ and its deps)
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        # workers fork from a daemon that has the cleaned layer imported (robolake.spark_daemon)
        "spark.python.daemon.module": "robolake.spark_daemon",
        # the driver's JVM schedules tasks and relays Python workers' results (in local mode
        # it is the executor too): the C2 compiler's work on that code took 0.5-1 s of CPU
        # per 8-task partition, more than it saved (C1 only: 0.15 s; see spark_scale.py)
        "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
        # on a cluster: attempts per task before the job fails (local mode: local[N,F])
        "spark.task.maxFailures": "4",
        "spark.sql.session.timeZone": "UTC",
        **(k8s_executor_config(CPU_SPOT) if master.startswith("k8s://") else {}),
        # executors run the code location's image (the same packages as the driver)
        **({"spark.kubernetes.container.image": image} if image else {}),
    }


def k8s_executor_config(pool: Pool) -> dict[str, str]:
    """Executors on Kubernetes, in `pool` (the cleaned step's own pool: CPU Spot), sized to
    its pod requests, scaled by dynamic allocation, and drained on a Spot notice."""
    cores = pool.requests.get("cpu", "1")
    memory_gi = int(pool.requests.get("memory", "4Gi").removesuffix("Gi"))
    conf = {
        # the driver is the Dagster step's own process (client mode); executors are pods
        "spark.submit.deployMode": "client",
        "spark.executor.cores": cores,
        "spark.kubernetes.executor.request.cores": cores,
        # JVM heap + overhead (Python workers, Arrow buffers) = the pool's memory request
        "spark.executor.memory": f"{max(1, memory_gi * 3 // 4)}g",
        "spark.executor.memoryOverhead": f"{max(1, memory_gi - memory_gi * 3 // 4)}g",
        "spark.kubernetes.executor.label." + POOL_LABEL: pool.label,
        "spark.dynamicAllocation.enabled": "true",
        # no shuffle service on Kubernetes: track shuffle files (the engine has no shuffle)
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.minExecutors": "0",
        "spark.dynamicAllocation.maxExecutors": str(MAX_EXECUTORS),
        "spark.dynamicAllocation.executorIdleTimeout": "60s",
        # a Spot notice (Karpenter drains the node): the executor finishes or hands back its
        # tasks before it goes; a task it loses is retried (spark.task.maxFailures)
        "spark.decommission.enabled": "true",
        "spark.storage.decommission.enabled": "true",
    }
    for key, value in pool.node_selector.items():
        conf[f"spark.kubernetes.executor.node.selector.{key}"] = value
    return conf


def executor_pod_template(pool: Pool) -> dict[str, Any]:
    """The executor pod template: Spark has no setting for tolerations."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "robolake-spark-executor", "labels": {POOL_LABEL: pool.label}},
        "spec": {
            "nodeSelector": dict(pool.node_selector),
            "tolerations": [dict(t) for t in pool.tolerations],
            "containers": [{"name": "spark-executor"}],
        },
    }


def k8s_driver_config(conf: dict[str, Any], pool: Pool = CPU_SPOT) -> dict[str, str]:
    """What only the running step pod knows: its address, its name (executors are owned
    by it, so they go when it goes), its namespace, and the pod template file."""
    template = Path(tempfile.mkdtemp(prefix="robolake-spark-")) / "executor-pod.yaml"
    template.write_text(yaml.safe_dump(executor_pod_template(pool)))
    out = {"spark.kubernetes.executor.podTemplateFile": str(template),
           "spark.driver.host": socket.gethostbyname(socket.gethostname()),
           "spark.driver.bindAddress": "0.0.0.0"}
    if os.environ.get("HOSTNAME"):
        out["spark.kubernetes.driver.pod.name"] = os.environ["HOSTNAME"]
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        out["spark.kubernetes.namespace"] = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return {k: v for k, v in out.items() if k not in conf}


def engine_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or get_settings()
    return {
        "engine": EngineResource(engine=resource_value(settings, "engine"),
                                 spark_min_bytes=resource_value(settings, "spark_min_bytes")),
        "pyspark": SparkSessionResource(spark_config=spark_config(
            settings.spark_master, image=settings.spark_image or None)),
    }
