"""Retention and tiering per layer from configs/retention.yaml, applied to an S3 lake as
lifecycle rules: objects move to STANDARD_IA after `infrequent_access` days, to GLACIER
after `archive` days and are deleted after `expire` days (absent: never). A local lake
is tiered by robolake.governance.tiering with the same rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

RETENTION_FILE = Path(__file__).resolve().parents[2] / "configs" / "retention.yaml"
TIERS = (("infrequent_access", "STANDARD_IA"), ("archive", "GLACIER"))


@dataclass(frozen=True)
class LayerRule:
    layer: str
    infrequent_access: int | None = None
    archive: int | None = None
    expire: int | None = None


def load_rules(path: Path = RETENTION_FILE) -> list[LayerRule]:
    """The rules, checked: whole days, each tier later than the one before (errors name
    the file and field)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    rules = []
    for layer, spec in (data.get("layers") or {}).items():
        unknown = set(spec) - {"infrequent_access", "archive", "expire"}
        if unknown:
            raise ValueError(f"{path}: layers.{layer}: unknown field(s) {sorted(unknown)}")
        days = [spec.get(k) for k in ("infrequent_access", "archive", "expire")]
        given = [d for d in days if d is not None]
        if any(not isinstance(d, int) or d < 1 for d in given) or given != sorted(set(given)):
            raise ValueError(f"{path}: layers.{layer}: days must be whole, >= 1 and increase "
                             f"from infrequent_access to archive to expire (got {spec})")
        rules.append(LayerRule(layer, *days))
    return rules


PINNED_LAYERS = {"datasets", "models"}  # a live version is pinned: decided per version


def lifecycle_rules(rules: list[LayerRule], root: str = "") -> list[dict]:
    """S3 lifecycle rules (PutBucketLifecycleConfiguration) for a lake under `root`: one per
    plain-file area of the catalog (raw copies, feature cache, annotation media, …) under its
    layer's rule. None covers a Delta table (its live files must stay readable where its log
    points; rows leave a table by erase and vacuum, not by file age), nor dataset and model
    versions (pinned while live, which a prefix cannot tell)."""
    from robolake.governance.catalog import FILE_AREAS

    prefix = root.strip("/") + "/" if root.strip("/") else ""
    by_layer = {r.layer: r for r in rules}
    out = []
    for area in FILE_AREAS.values():
        r = by_layer.get(area.layer)
        if r is None or area.layer in PINNED_LAYERS:
            continue
        rule = {"ID": f"robolake-{area.prefix.replace('/', '-')}", "Status": "Enabled",
                "Filter": {"Prefix": f"{prefix}{area.prefix}/"},
                "Transitions": [{"Days": getattr(r, field), "StorageClass": cls}
                                for field, cls in TIERS if getattr(r, field) is not None]}
        if r.expire is not None:
            rule["Expiration"] = {"Days": r.expire}
        if not rule["Transitions"]:
            del rule["Transitions"]
        out.append(rule)
    return out


def apply_lifecycle(s3_client, bucket: str, root: str = "",
                    rules: list[LayerRule] | None = None) -> list[dict]:
    """Replace the bucket's lifecycle configuration with the lake's rules; returns them."""
    wanted = lifecycle_rules(rules if rules is not None else load_rules(), root)
    s3_client.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": wanted})
    return wanted


def _objects(lake):
    """(key, tier, size) of every object: an S3 lake's tier is the storage class; a local
    lake's is hot or cold (robolake.governance.tiering)."""
    from robolake.storage import LocalStore

    if not isinstance(lake, LocalStore):
        for obj in lake.list(""):
            yield obj.key, obj.storage_class or "STANDARD", obj.size
        return
    from robolake.governance.tiering import cold_objects, hot_objects

    for tier, objects in (("hot", hot_objects(lake)), ("cold", cold_objects(lake))):
        for obj in objects:
            yield obj.key, tier, obj.size


def storage_report(lake) -> dict[tuple[str, str], tuple[int, int]]:
    """(layer, tier) -> (objects, bytes) of everything under the lake root (a local
    lake's cold folder <lake>/.cold as the tier `cold`)."""
    report: dict[tuple[str, str], tuple[int, int]] = {}
    for key, tier, size in _objects(lake):
        layer = key.split("/", 1)[0] if "/" in key else "(root)"
        count, total = report.get((layer, tier), (0, 0))
        report[(layer, tier)] = (count + 1, total + size)
    return dict(sorted(report.items()))
