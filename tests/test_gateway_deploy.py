"""deploy/k8s/gateway.yaml and nats.yaml: strictly valid, and consistent with the code
(the variables the gateway reads, the broker address, the HPA's target, the NATS cluster's
routes matching its replicas). tests/test_deploy.py validates every manifest too."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from test_deploy import kubernetes_validate

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"


def docs(name: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all((K8S / name).read_text()) if d}


def env_of(deployment: dict) -> dict[str, dict]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_gateway_and_nats_manifests_validate_strictly():
    text = kubernetes_validate(K8S / "gateway.yaml", K8S / "nats.yaml")
    assert text.count("passed") == len(docs("gateway.yaml")) + len(docs("nats.yaml")) == 9


def test_gateway_manifest_matches_the_code():
    gw = docs("gateway.yaml")
    nats = docs("nats.yaml")
    dep = gw[("Deployment", "robolake-gateway")]
    env = env_of(dep)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["robolake", "gateway"]
    port = int(container["command"][container["command"].index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    # variables the code reads (robolake/gateway/*.py, and the lake's in robolake/settings.py)
    source = "".join(p.read_text() for p in [*(REPO / "robolake" / "gateway").glob("*.py"),
                                              REPO / "robolake" / "settings.py"])
    for name in env:
        if name.startswith("ROBOLAKE_"):
            assert f'"{name}"' in source, name
    for secret in ("ROBOLAKE_JWT_SECRET", "ROBOLAKE_GATEWAY_DB"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "robolake-gateway"
    # the broker address is the NATS client Service
    broker = env["ROBOLAKE_BROKER_URL"]["value"]
    host, broker_port = re.match(r"nats://([\w-]+):(\d+)$", broker).groups()
    assert nats[("Service", host)]["spec"]["ports"][0]["port"] == int(broker_port)
    writer_env = env_of(gw[("Deployment", "robolake-stream-writer")])
    assert writer_env["ROBOLAKE_BROKER_URL"]["value"] == broker
    assert writer_env["ROBOLAKE_LANDING"]["value"] == env["ROBOLAKE_LANDING"]["value"]
    hpa = gw[("HorizontalPodAutoscaler", "robolake-gateway")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "robolake-gateway"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    service = gw[("Service", "robolake-gateway")]
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    probe = container["readinessProbe"]["httpGet"]["path"]
    assert probe == "/api/v1/health"


def test_nats_cluster_routes_name_every_replica():
    nats = docs("nats.yaml")
    sts = nats[("StatefulSet", "robolake-nats")]
    conf = nats[("ConfigMap", "robolake-nats-config")]["data"]["nats.conf"]
    routes = re.findall(r"nats://(robolake-nats-\d+)\.([\w-]+):6222", conf)
    assert [r[0] for r in routes] == [f"robolake-nats-{i}"
                                      for i in range(sts["spec"]["replicas"])]
    assert {r[1] for r in routes} == {sts["spec"]["serviceName"]}
    assert "jetstream" in conf and "store_dir: /data/jetstream" in conf
    mounts = sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "data", "mountPath": "/data"} in mounts
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
