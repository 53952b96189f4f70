"""schemathesis against the gateway's own OpenAPI document, served by uvicorn with a real
nats-server behind it: a bounded number of generated requests per operation, with a robot's
and an engineer's token, and never a 5xx. The platform operations need a Dagster webserver
(tests/test_gateway_platform.py) and answer 503 without one, so they are left out here."""

from __future__ import annotations

import pytest
import schemathesis
from conftest import require_service
from gateway_fixtures import NatsServer, make_settings, nats_server_binary, start_gateway
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    require_service(nats_server_binary() is not None, "nats-server binary not installed")
    tmp = tmp_path_factory.mktemp("schemathesis")
    nats = NatsServer(tmp / "nats").start()
    gw = start_gateway(make_settings(tmp, broker_url=nats.url))
    tokens = {"robot": gw.token(gw.key("robot")), "engineer": gw.token(gw.key("engineer"))}
    yield gw, tokens
    gw.stop()
    nats.stop()


def _operations(gw) -> list:
    schema = schemathesis.openapi.from_url(f"{gw.url}/api/v1/openapi.json")
    ops = [result.ok() for result in schema.get_all_operations()]
    return [op for op in ops if "platform" not in (op.definition.raw.get("tags") or [])]


def _checker(op, mode, token: str, calls: dict[str, set[int]]):
    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {token}"})
        calls.setdefault(f"{case.method} {op.path}", set()).add(response.status_code)
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} -> {response.status_code}: "
            f"{response.text[:300]}")
        if response.status_code in (429, 503):
            assert {k.lower() for k in response.headers} & {"retry-after"}, response.text

    return check


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("role", ["robot", "engineer"])
def test_no_server_errors(api, role, mode):
    gw, tokens = api
    operations = _operations(gw)
    assert len(operations) >= 9
    calls: dict[str, set[int]] = {}
    impossible = []
    for op in operations:
        try:
            _checker(op, mode, tokens[role], calls)()
        except Unsatisfiable:  # nothing to get wrong (no parameters, no body)
            impossible.append(f"{op.method.upper()} {op.path}")
    if mode == GenerationMode.POSITIVE:
        assert impossible == []
    exercised = {k.split(" ", 1)[1] for k in calls} | {k.split(" ", 1)[1] for k in impossible}
    assert exercised == {op.path for op in operations}
    print(role, mode, {k: sorted(v) for k, v in sorted(calls.items())}, impossible)
