"""`robolake catalog search TEXT`: tables, columns, file areas, dataset versions and model
versions whose name, description or tags contain the text, with classification and lineage."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from robolake.governance import catalog
from robolake.storage import LocalStore, Store


@dataclass(frozen=True)
class Hit:
    kind: str  # table, column, files, dataset_version, model_version
    name: str
    classification: str
    owner: str
    description: str
    lineage: str = ""  # what it is derived from


def _matches(text: str, *fields: object) -> bool:
    return any(text in str(f).lower() for f in fields if f)


def _catalog_hits(text: str) -> list[Hit]:
    hits = []
    for t in catalog.TABLES.values():
        if _matches(text, t.key, t.description, t.layer, t.owner, t.classification):
            hits.append(Hit("table", t.key, t.classification, t.owner, t.description))
        for c in t.columns:
            if _matches(text, c.name, c.description, c.classification):
                hits.append(Hit("column", f"{t.key}.{c.name}", c.classification, t.owner,
                                c.description, ", ".join(c.derived_from)))
    for a in catalog.FILE_AREAS.values():
        if _matches(text, a.prefix, a.description, a.layer, a.classification):
            hits.append(Hit("files", a.prefix + "/", a.classification, a.owner, a.description))
    return hits


def spec_features(spec: dict) -> list[str]:
    """Feature and label names of a dataset spec (as in its manifest) for the catalog."""
    feats = [k for k, v in (spec.get("features") or {}).items() if v]
    kind = (spec.get("labels") or {}).get("kind")
    return feats + ([f"label_{kind}"] if kind else [])


def dataset_versions(lake: Store) -> list[tuple[Hit, tuple[str, ...]]]:
    """Every registered dataset version as a hit, with the words it is found by."""
    from robolake.datasets.build import list_versions
    from robolake.governance.erase import withdrawn_versions

    withdrawn = withdrawn_versions(lake)
    out = []
    for row in list_versions(lake).iter_rows(named=True):
        manifest = json.loads(lake.read_bytes(row["manifest_key"]))
        spec = manifest.get("spec") or {}
        features = spec_features(spec)
        inputs = json.loads(row["inputs"] or "{}")
        lineage = ", ".join(f"{k}@v{v}" for k, v in sorted(inputs.items()))
        name = f"{row['name']}@{row['version']}"
        note = f"[withdrawn: {withdrawn[name]}] " if name in withdrawn else ""
        hit = Hit("dataset_version", name, catalog.dataset_classification(features),
                  catalog.OWNERS["ml"], note + (spec.get("description") or ""), lineage)
        out.append((hit, tuple(features)))
    return out


def registry_exists(lake: Store) -> bool:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return True
    return isinstance(lake, LocalStore) and (lake.root / "mlflow" / "mlflow.db").exists()


def model_hits(lake: Store, text: str, datasets: dict[str, str]) -> list[Hit]:
    """Registered model versions; a version's level is the dataset version's it was trained
    on (`datasets`: name@version -> level)."""
    if not registry_exists(lake):
        return []
    from robolake.models import tracking

    hits = []
    for mv in tracking.configure(lake).search_model_versions():
        tags = dict(mv.tags or {})
        name = f"{mv.name}/{mv.version}"
        if not _matches(text, name, mv.description, *tags.keys(), *tags.values()):
            continue
        trained_on = f"{tags.get('dataset.name', '?')}@{tags.get('dataset.version', '?')}"
        hits.append(Hit("model_version", name, datasets.get(trained_on, catalog.RESTRICTED),
                        catalog.OWNERS["ml"], mv.description or "", f"trained on {trained_on}"))
    return hits


def search(lake: Store | None, text: str) -> list[Hit]:
    """Everything the catalog and the lake know whose name, description or tags contain
    `text` (case-insensitive). Without a lake, only the declared catalog is searched."""
    needle = text.strip().lower()
    if not needle:
        raise ValueError("catalog search: give a non-empty TEXT to look for")
    hits = _catalog_hits(needle)
    if lake is not None:
        versions = dataset_versions(lake)  # all of them: a model's level is its dataset's
        hits += [h for h, words in versions if _matches(
            needle, h.name, h.description, h.lineage, h.classification, *words)]
        hits += model_hits(lake, needle, {h.name: h.classification for h, _ in versions})
    return hits
