"""Datasets: specs, builds, shards and versions (see robolake.datasets.spec)."""
