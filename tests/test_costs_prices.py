"""Prices in one place: configs/prices.yaml, the pools that reference it, and the
Karpenter NodePools that must allow exactly the priced instance types."""

from pathlib import Path

import pytest
import yaml

from robolake.costs import prices as P
from robolake_resources import pools

ROOT = Path(__file__).resolve().parents[1]
NODEPOOLS = [d for d in yaml.safe_load_all((ROOT / "deploy/karpenter/nodepools.yaml").read_text())
             if d and d["kind"] == "NodePool"]
PRICES = P.load_prices(ROOT / "configs/prices.yaml")


def _instance_types(nodepool: dict) -> list[str]:
    reqs = [r for r in nodepool["spec"]["template"]["spec"]["requirements"]
            if r["key"] == "node.kubernetes.io/instance-type"]
    assert len(reqs) == 1 and reqs[0]["operator"] == "In", nodepool["metadata"]["name"]
    return reqs[0]["values"]


def test_nodepools_allow_exactly_the_priced_instance_types():
    by_label = {d["spec"]["template"]["metadata"]["labels"][pools.POOL_LABEL]: d
                for d in NODEPOOLS}
    assert set(PRICES.pools) == set(pools.POOLS)
    for pool in pools.POOLS.values():
        listed = _instance_types(by_label[pool.label])
        assert len(listed) == len(set(listed)), pool.name
        assert set(listed) == set(pool.prices(PRICES).types), pool.name
    # nothing else narrows the choice (families, sizes, categories would price other types)
    for nodepool in NODEPOOLS:
        keys = {r["key"] for r in nodepool["spec"]["template"]["spec"]["requirements"]}
        assert not keys & {"karpenter.k8s.aws/instance-family",
                           "karpenter.k8s.aws/instance-category",
                           "karpenter.k8s.aws/instance-size"}, nodepool["metadata"]["name"]


def test_every_priced_type_can_host_a_step_of_its_pool():
    overhead = PRICES.compute.node_overhead
    for pool in pools.POOLS.values():
        cpu = P.cpu_cores(pool.requests["cpu"])
        memory = P.memory_gib(pool.requests["memory"])
        for name, t in pool.prices(PRICES).types.items():
            assert P.fits(t, cpu, memory, pool.gpus, overhead), (pool.name, name)
            assert t.gpus == pool.gpus, (pool.name, name)  # the NodePool's gpu-count
            assert 0 < t.spot < t.on_demand, (pool.name, name)
            if t.gpus:
                assert PRICES.gpu_of(t).memory_gib >= 16
    assert pools.CPU_SPOT.spot and not pools.GPU_STANDARD.spot
    # the reference node of the GPU pool costs what the file says
    assert pools.GPU_STANDARD.prices(PRICES).reference_type.on_demand == 1.212


def test_quantities():
    assert P.cpu_cores("500m") == 0.5 and P.cpu_cores("4") == 4.0
    assert P.memory_gib("16Gi") == 16 and P.memory_gib("512Mi") == 0.5
    assert P.memory_gib(str(2 * 1024**3)) == 2
    assert P.memory_gib("4G") == pytest.approx(4e9 / 1024**3)


def test_a_bad_price_file_names_the_file_and_field(tmp_path):
    data = yaml.safe_load((ROOT / "configs/prices.yaml").read_text())
    data["pools"]["gpu_standard"]["types"]["g5.2xlarge"]["gpu"] = "B200"
    data["pools"]["cpu_spot"]["reference"] = "z9.huge"
    data["storage"]["layers"]["raw"] = "tape"
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(P.PricesError) as err:
        P.load_prices(path)
    text = str(err.value)
    assert str(path) in text and "pools.cpu_spot" in text and "'z9.huge'" in text
    data = yaml.safe_load((ROOT / "configs/prices.yaml").read_text())
    data["pools"]["gpu_standard"]["types"]["g5.2xlarge"]["gpu"] = "B200"
    data["storage"]["tiers"]["s3_standard"]["gb_month"] = -1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(P.PricesError) as err:
        P.load_prices(path)
    assert "storage.tiers.s3_standard.gb_month" in str(err.value)
    data["storage"]["tiers"]["s3_standard"]["gb_month"] = 0.023
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(P.PricesError, match="g5.2xlarge: gpu 'B200'"):
        P.load_prices(path)
    with pytest.raises(P.PricesError, match="no such price file"):
        P.load_prices(tmp_path / "missing.yaml")
    path.write_text("pools: [")
    with pytest.raises(P.PricesError, match="not valid YAML"):
        P.load_prices(path)


def test_default_path_follows_the_environment(tmp_path, monkeypatch):
    from robolake.settings import reset_settings

    monkeypatch.setenv(P.PRICES_ENV, str(tmp_path / "p.yaml"))
    assert P.default_prices_path() == tmp_path / "p.yaml"
    monkeypatch.delenv(P.PRICES_ENV)
    monkeypatch.setenv("ROBOLAKE_TRAINING_CONFIGS", str(tmp_path / "configs/training"))
    reset_settings()
    try:
        assert P.default_prices_path() == tmp_path / "configs/prices.yaml"
    finally:
        monkeypatch.undo()
        reset_settings()
