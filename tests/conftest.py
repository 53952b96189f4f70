from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# the real recordings date from 2015 to 2022: their days must be partitions in every test
# process (the daily dimension otherwise starts at the lake's first date, robolake_partitions)
os.environ.setdefault("ROBOLAKE_PARTITIONS_START", "2015-01-01")


# the slowest files start first: `make test` hands whole files to two workers, and a slow
# file taken last would run alone at the end
SLOW_FIRST = ("test_ui_browser.py", "test_exactly_once.py", "test_postgres_instance.py")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable otherwise


def require_service(available: bool, why: str) -> None:
    """Skip with a visible reason locally; in CI a missing service is a failure."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"required service missing in CI: {why}")
    pytest.skip(why)


@pytest.fixture(autouse=True)
def fresh_settings():
    """Each test reads the settings from its own environment (monkeypatched or not): the
    process-wide object is read once, on first use, so forget it around each test."""
    from robolake.settings import reset_settings

    reset_settings()
    yield
    reset_settings()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    require_service(SHARED_DATA.is_dir(), f"real recordings not found at {SHARED_DATA}")
    return SHARED_DATA


def land(landing: Path, src: Path, identity: dict | None = None, name: str | None = None) -> Path:
    """Copy a recording into a landing folder the way an uploader would, with a sidecar."""
    dst = landing / (name or src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if identity is not None:
        Path(f"{dst}.meta.json").write_text(json.dumps(identity))
    return dst


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    landing, lake = tmp_path / "landing", tmp_path / "lake"
    landing.mkdir()
    return landing, lake


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3-compatible server (moto) on 127.0.0.1 for the session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - moto[server] is a dev dependency
        require_service(False, f"moto server not installed: {exc}")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    yield {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    server.stop()
