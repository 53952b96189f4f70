"""PySpark's worker daemon with the cleaned layer's modules imported before it forks.

Spark starts one daemon per executor (`spark.python.daemon.module`, set by the project's
Spark settings) and forks a Python worker from it for each concurrent task; a worker is
reused for the next tasks. A worker forked from this daemon starts with robolake, polars,
pyarrow and deltalake already imported, instead of spending its first task importing them
(~0.4 s, paid again by every executor that dynamic allocation adds).

Nothing here starts a thread or touches a file: forking after it is as safe as forking
PySpark's own daemon.
"""

from pyspark import daemon

import robolake.spark_engine  # noqa: F401  (decode, clean, align, the part-file writer)

if __name__ == "__main__":
    daemon.manager()
