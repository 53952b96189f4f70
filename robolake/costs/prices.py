"""Prices of compute and storage, read from one YAML file (configs/prices.yaml).

`load_prices()` validates the file like every other config (an error names the file
and the field). Where it is: $ROBOLAKE_PRICES, else `prices.yaml` beside the training
configs folder (./configs/prices.yaml on a laptop, /opt/robolake/configs in the image).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, model_validator

from robolake.yaml_config import Strict, read_yaml, validate_model

GIB = 1024**3
PRICES_ENV = "ROBOLAKE_PRICES"


class PricesError(ValueError):
    """A price file that cannot be used; the message names the file and the field."""


class Gpu(Strict):
    memory_gib: float = Field(gt=0)
    tflops_fp32: float = Field(gt=0)
    tflops_half: float = Field(gt=0)


class InstanceType(Strict):
    vcpu: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    gpus: int = Field(0, ge=0)
    gpu: str | None = None  # a key of `gpus` when gpus > 0
    on_demand: float = Field(gt=0)  # USD per hour
    spot: float = Field(gt=0)

    def price(self, spot: bool) -> float:
        return self.spot if spot else self.on_demand


class PoolPrices(Strict):
    reference: str  # the type a step's share of a node is priced against
    types: dict[str, InstanceType] = Field(min_length=1)

    @model_validator(mode="after")
    def _reference_listed(self) -> PoolPrices:
        if self.reference not in self.types:
            raise ValueError(f"reference {self.reference!r} is not one of the pool's types "
                             f"({', '.join(self.types)})")
        return self

    @property
    def reference_type(self) -> InstanceType:
        return self.types[self.reference]


class NodeOverhead(Strict):
    cpu: float = Field(0.25, ge=0)
    memory_gib: float = Field(1.5, ge=0)


class Compute(Strict):
    efficiency: float = Field(0.3, gt=0, le=1)
    cpu_gflops_per_vcpu: float = Field(40, gt=0)
    step_overhead_s: float = Field(0.005, ge=0)  # per training step, whatever its FLOPs
    node_overhead: NodeOverhead = NodeOverhead()


class Tier(Strict):
    gb_month: float = Field(ge=0)
    put_per_1000: float = Field(0, ge=0)
    get_per_1000: float = Field(0, ge=0)


class Storage(Strict):
    tiers: dict[str, Tier] = Field(min_length=1)
    layers: dict[str, str] = Field(default_factory=dict)
    default: str

    @model_validator(mode="after")
    def _tiers_known(self) -> Storage:
        for name, tier in {**self.layers, "(default)": self.default}.items():
            if tier not in self.tiers:
                raise ValueError(f"layer {name}: unknown tier {tier!r}; expected one of "
                                 f"{', '.join(self.tiers)}")
        return self

    def tier_of(self, layer: str) -> Tier:
        return self.tiers[self.layers.get(layer, self.default)]


class Prices(Strict):
    currency: str = "USD"
    as_of: str
    region: str
    gpus: dict[str, Gpu] = Field(default_factory=dict)
    compute: Compute = Compute()
    pools: dict[str, PoolPrices] = Field(min_length=1)
    storage: Storage

    @model_validator(mode="after")
    def _gpus_known(self) -> Prices:
        for pool, prices in self.pools.items():
            for name, t in prices.types.items():
                if t.gpus and t.gpu not in self.gpus:
                    raise ValueError(f"pools.{pool}.types.{name}: gpu {t.gpu!r} is not one of "
                                     f"gpus ({', '.join(self.gpus) or 'none'})")
                if t.gpu and not t.gpus:
                    raise ValueError(f"pools.{pool}.types.{name}: names a gpu but gpus is 0")
        return self

    def pool(self, name: str) -> PoolPrices:
        if name not in self.pools:
            raise PricesError(f"no prices for pool {name!r}; prices.yaml has "
                              f"{', '.join(self.pools)}")
        return self.pools[name]

    def gpu_of(self, instance: InstanceType) -> Gpu | None:
        return self.gpus[instance.gpu] if instance.gpu else None


def default_prices_path() -> Path:
    if os.environ.get(PRICES_ENV, "").strip():
        return Path(os.environ[PRICES_ENV].strip()).expanduser()
    from robolake.settings import get_settings

    return get_settings().training_configs_dir.parent / "prices.yaml"


def parse_prices(data: object, source: str = "<prices>") -> Prices:
    return validate_model(Prices, data, source, PricesError, "pools and storage")


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int) -> Prices:
    return parse_prices(read_yaml(path, PricesError, "price file"), str(path))


def load_prices(path: str | Path | None = None) -> Prices:
    """The validated price file (cached until the file changes)."""
    path = Path(path) if path is not None else default_prices_path()
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise PricesError(f"{path}: no such price file (set {PRICES_ENV})") from None
    return _load(path, mtime)


_BINARY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
_DECIMAL = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("2", "500m") in cores."""
    text = str(quantity).strip()
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_gib(quantity: str | int | float) -> float:
    """A Kubernetes memory quantity ("16Gi", "512Mi", "4G") in GiB."""
    text = str(quantity).strip()
    for suffix, factor in (*_BINARY.items(), *_DECIMAL.items()):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor / GIB
    return float(text) / GIB


def fits(instance: InstanceType, cpu: float, memory: float, gpus: int,
         overhead: NodeOverhead) -> bool:
    """Whether one pod asking for `cpu` cores, `memory` GiB and `gpus` fits on a node."""
    return (cpu <= instance.vcpu - overhead.cpu
            and memory <= instance.memory_gib - overhead.memory_gib
            and gpus <= instance.gpus)
