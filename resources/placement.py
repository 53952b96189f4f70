"""Where a training step runs: the instance recommender sizes its GPU request.

`training_placement` estimates the config's peak memory on its dataset spec
(robolake.costs.recommend) and asks for one GPU per training process on the
instance types of the cheapest pool whose GPUs hold it with headroom. Without a
spec to size it (a config whose dataset spec is not in the specs folder) it keeps
the fixed default: one GPU, or a multi-GPU node for several processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robolake.costs.prices import GIB, PricesError, load_prices
from robolake.costs.recommend import find_spec, recommend_for_spec
from robolake.models.architectures import ArchitectureError
from robolake.models.config import TrainingConfig
from robolake_resources import pools


def training_placement(config: TrainingConfig,
                       specs_dir: Path | None) -> tuple[dict[str, Any], str]:
    """The asset's pool keyword arguments, and a sentence for its description."""
    fallback = pools.gpu(high=config.distributed.nproc_per_node > 1)
    spec = find_spec(specs_dir, config.dataset.name) if specs_dir else None
    if spec is None:
        return fallback, "GPU request: the default (no dataset spec to size it)"
    try:
        rec = recommend_for_spec(config, spec, load_prices())
    except (ArchitectureError, PricesError) as exc:
        return fallback, f"GPU request: the default (not sized: {exc})"
    if rec.chosen is None:
        return fallback, (f"GPU request: the default; no instance type holds the estimated "
                          f"{rec.needed_bytes / GIB:.1f} GiB per GPU")
    kwargs = pools.gpu_sized(rec.chosen.pool, rec.processes, rec.fitting_types)
    return kwargs, (f"GPU request sized by `robolake recommend`: {rec.processes} GPU(s) with "
                    f">= {rec.needed_bytes / GIB:.2f} GiB each on "
                    f"{', '.join(rec.fitting_types)}")
