"""Spot: a training process that gets SIGTERM (the two-minute notice) checkpoints the step
it is on, exits with a retryable error, and the retry resumes from that step. A real
process, a real signal, a real lake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import yaml

from robolake.errors import CapacityLost, is_transient
from robolake.models.synthetic import small_config, write_synthetic_dataset
from robolake.models.train import CheckpointStore, checkpoint_prefix, train
from robolake.storage import open_store


def test_sigterm_checkpoints_the_current_step_and_the_retry_resumes(tmp_path):
    lake = open_store(tmp_path / "lake")
    write_synthetic_dataset(lake, "scenes", kind="scenario", seed=1,
                            samples={"train": 192, "val": 32, "test": 32})
    # no periodic checkpoint: only epoch ends (every 6 steps) and the SIGTERM write one
    config = small_config("spot", "scenes", training={"epochs": 400},
                          checkpoint={"every_steps": None, "every_minutes": 60, "keep": 2})
    path = tmp_path / "spot.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "robolake.models.torchrun_entry", "--config", str(path),
           "--lake", lake.uri, "--run-key", "spot", "--no-mlflow"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    epoch_ends = []
    while len(epoch_ends) < 2:  # two epochs done (12 steps): training is under way
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()[-2000:]
        if line.startswith("epoch "):
            epoch_ends.append(line)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _out, err = proc.communicate(timeout=120)
    assert time.monotonic() - sent < 60  # well inside the two-minute notice
    assert proc.returncode != 0
    pointer = CheckpointStore(lake, checkpoint_prefix("spot", "spot")).latest_pointer()
    assert not pointer["finished"] and pointer["step"] > 12
    assert f"CapacityLost: SIGTERM at step {pointer['step']}: checkpointed" in err
    assert pointer["step"] < 400 * 6

    # the retry (same run key) resumes from exactly that step
    resumed = train(config, lake, run_key="spot", stop_after_steps=pointer["step"] + 1,
                    track=False, log=lambda _m: None)
    assert resumed.resumed_from.endswith(f"step-{pointer['step']:08d}.pt")
    assert resumed.global_step == pointer["step"] + 1
    assert is_transient(CapacityLost("x"))  # the pool's retry policy retries it
