"""Datasets: specs, builds, shards and versions (see robolake.datasets.spec).

`load(name, version, split)` streams a built version into PyTorch; it is
imported lazily so reading specs does not import torch.
"""


def __getattr__(name: str):
    if name in ("load", "read_manifest"):
        from robolake.datasets import loader

        return getattr(loader, name)
    raise AttributeError(name)
