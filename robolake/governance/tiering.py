"""Tiering of a local lake (the embedded default) by configs/retention.yaml, with the
semantics of the S3 lifecycle rules that the same file generates: a file moves to the
cold tier once older than its layer's first transition (`infrequent_access`, else
`archive`) and is deleted once older than `expire`; age is the time since the file was
written (its mtime, which a move keeps, as S3 counts from the object's creation).

The local lake has two tiers: hot (the lake folder) and cold (`<lake>/.cold/`, which may
be a mount point of, or a link to, a cheaper disk), where a file keeps its relative
path. A cold file is not where readers look, like an S3 object in GLACIER: `restore`
moves it back. GDPR erase deletes cold copies too (`cold_twins`).

What moves, and what never does:
- Files of Delta tables (any folder with a `_delta_log`) never move or expire by age:
  their live files must stay where the log points, and the files no version needs are
  vacuum's (robolake.maintenance); rows leave a table by erase or a rewrite, not by
  file age. They are reported as hot.
- Dataset versions that are registered and not withdrawn (`datasets/<name>/<version>/`)
  and registered model versions (`models/<name>/versions/<v>/`) are pinned: never moved
  or expired. Unregistered or withdrawn dataset folders and checkpoints follow the rules.
- Everything else under a layer with a rule (raw recordings and quarantine copies under
  raw/files and raw/quarantine, checkpoints, …) is tiered and expired.

Planning reads only; `apply_tiering` moves (atomic rename on one filesystem, copy then
rename then delete across filesystems) and deletes, and records each layer's moves and
deletions in the audit log (ops/audit) with every file named. Re-running finds nothing
left to do: moved files are no longer in the hot tier, and a move interrupted between
copy and delete is finished.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from robolake.governance.retention import LayerRule, load_rules
from robolake.storage import LocalStore

COLD_DIR = ".cold"
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class TierAction:
    key: str  # relative to the lake root (and to the cold root)
    layer: str
    action: str  # "cold": move hot -> cold; "expire": delete
    tier: str  # where the file is now: hot | cold
    size: int
    age_days: float


@dataclass
class TierPlan:
    actions: list[TierAction] = field(default_factory=list)
    pinned: int = 0  # files of live dataset and model versions, left alone
    in_tables: int = 0  # files of Delta tables, left alone


def cold_root(lake: LocalStore) -> Path:
    return lake.root / COLD_DIR


def cold_twins(lake, keys: list[str]) -> list[str]:
    """Where cold copies of these keys (files or folder prefixes) lie, relative to the
    lake root, for whoever must find every copy (erase); none for an S3 lake."""
    return [f"{COLD_DIR}/{k}" for k in keys] if isinstance(lake, LocalStore) else []


def hot_objects(lake: LocalStore) -> Iterator:
    """The lake's files outside hidden folders (the cold folder is one) as ObjectInfo."""
    return (info for info in lake.list("") if not info.key.startswith("."))


def cold_objects(lake: LocalStore) -> Iterator:
    yield from LocalStore(cold_root(lake)).list("")


def live_datasets(lake: LocalStore) -> set[str]:
    """name@version of every registered dataset version that is not withdrawn."""
    from robolake.datasets.build import REGISTRY
    from robolake.governance.erase import withdrawn_versions
    from robolake.tables import read_table

    table = read_table(lake, REGISTRY, columns=["name", "version"])
    registered = set() if table is None else {f"{r['name']}@{r['version']}"
                                              for r in table.to_pylist()}
    return registered - set(withdrawn_versions(lake))


def is_pinned(key: str, live: set[str]) -> bool:
    parts = key.split("/")
    if parts[0] == "datasets" and len(parts) >= 4:
        return f"{parts[1]}@{parts[2]}" in live
    return parts[0] == "models" and len(parts) >= 5 and parts[2] == "versions"


def _decide(info, layer: str, rule: LayerRule, tier: str, now_ns: int) -> TierAction | None:
    age = (now_ns - info.mtime_ns) / DAY_NS
    cold_after = rule.infrequent_access or rule.archive
    if rule.expire is not None and age >= rule.expire:
        return TierAction(info.key, layer, "expire", tier, info.size, age)
    if tier == "hot" and cold_after is not None and age >= cold_after:
        return TierAction(info.key, layer, "cold", tier, info.size, age)
    return None


def plan_tiering(lake: LocalStore, rules: list[LayerRule] | None = None,
                 cold: str | Path | None = None, now_ns: int | None = None) -> TierPlan:
    """What the rules do to the lake now (nothing is touched)."""
    from robolake.maintenance import discover_tables

    by_layer = {r.layer: r for r in (rules if rules is not None else load_rules())}
    now_ns = time.time_ns() if now_ns is None else now_ns
    tables = tuple(f"{t}/" for t in discover_tables(lake))
    live, plan = live_datasets(lake), TierPlan()
    for tier, objects in (("hot", hot_objects(lake)), ("cold", cold_objects(lake))):
        for info in objects:
            layer = info.key.split("/", 1)[0]
            if layer not in by_layer or info.is_symlink or "/" not in info.key:
                continue
            if info.key.startswith(tables):
                plan.in_tables += 1
            elif is_pinned(info.key, live):
                plan.pinned += 1
            elif (action := _decide(info, layer, by_layer[layer], tier, now_ns)) is not None:
                plan.actions.append(action)
    return plan


def _move(src: Path, dst: Path) -> bool:
    """Move one file keeping its mtime; False if it is gone (moved by an earlier run)."""
    if not src.exists():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        part = dst.with_name(dst.name + ".part")
        shutil.copy2(src, part)  # keeps the mtime: the age goes on counting from the write
        os.replace(part, dst)
        src.unlink()
    return True


def apply_tiering(lake: LocalStore, plan: TierPlan) -> dict:
    """Carry out the plan; audit each layer's moves and deletions; returns counts."""
    from robolake.governance import audit

    root, done = cold_root(lake), {}
    for act in plan.actions:
        base = lake.root if act.tier == "hot" else root
        if act.action == "cold":
            ok = _move(base / act.key, root / act.key)
        else:
            ok = (base / act.key).exists()
            (base / act.key).unlink(missing_ok=True)
        if ok:
            done.setdefault((act.layer, act.action), []).append(act)
    for (layer, action), acts in sorted(done.items()):
        audit.record(lake, "write" if action == "cold" else "purge", layer,
                     files=[f"{a.tier}:{a.key}" for a in acts],
                     details={"operation": f"tier-{action}", "files": len(acts),
                              "bytes": sum(a.size for a in acts), "cold_root": str(root)})
    return {f"{layer}:{action}": len(acts) for (layer, action), acts in sorted(done.items())}


def restore(lake: LocalStore, key: str) -> bool:
    """Move one cold file back to where readers find it (audited); False if not cold."""
    from robolake.governance import audit

    moved = _move(cold_root(lake) / key, lake.root / key)
    if moved:
        audit.record(lake, "write", key.split("/", 1)[0], files=[f"cold:{key}"],
                     details={"operation": "tier-restore"})
    return moved
