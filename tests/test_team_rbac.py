"""Per-team namespaces and RBAC: deploy/teams/rbac.yaml is generated from the Kueue teams,
validates strictly against the built-in Kubernetes schemas, and grants each service account
exactly what it needs in its own team's namespace and nothing elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from robolake_resources import kueue, team_rbac
from tests.test_deploy import HELM_VALUES, kubernetes_validate

RBAC = Path(__file__).resolve().parents[1] / "deploy" / "teams" / "rbac.yaml"
DOCS = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
KUEUE_DOCS = [d for d in yaml.safe_load_all(
    (RBAC.parents[1] / "kueue" / "queues.yaml").read_text()) if d]
RUN_WORKER = ("robolake", "robolake")  # (namespace, service account) of the run worker


def allowed(subject: tuple[str, str], namespace: str, group: str, resource: str,
            verb: str) -> bool:
    """What the API server's RBAC authorizer decides from these Roles and RoleBindings."""
    roles = {(d["metadata"]["namespace"], d["metadata"]["name"]): d["rules"]
             for d in DOCS if d["kind"] == "Role"}
    for binding in (d for d in DOCS if d["kind"] == "RoleBinding"):
        if binding["metadata"]["namespace"] != namespace or not any(
                (s["namespace"], s["name"]) == subject for s in binding["subjects"]):
            continue
        for rule in roles[(namespace, binding["roleRef"]["name"])]:
            if (group in rule["apiGroups"] and resource in rule["resources"]
                    and verb in rule["verbs"]):
                return True
    return False


def test_rbac_yaml_is_generated_from_the_teams():
    assert RBAC.read_text() == team_rbac.render() == team_rbac.render(), \
        "regenerate: python -m robolake_resources.team_rbac > deploy/teams/rbac.yaml"
    kinds = [(d["kind"], d["metadata"].get("namespace", d["metadata"]["name"])) for d in DOCS]
    teams = [f"team-{t}" for t in kueue.TEAMS]
    assert kinds == [(k, ns) for ns in teams for k in (
        "Namespace", "ServiceAccount", "Role", "RoleBinding", "Role", "RoleBinding")]
    # the same namespaces as the Kueue LocalQueues', the same objects
    assert [d for d in DOCS if d["kind"] == "Namespace"] == [
        d for d in KUEUE_DOCS if d["kind"] == "Namespace"]
    assert {d["metadata"]["namespace"] for d in KUEUE_DOCS if d["kind"] == "LocalQueue"} == \
        set(teams)


def test_every_object_validates_strictly():
    text = kubernetes_validate(RBAC)
    assert text.count("passed") == len(DOCS) == 6 * len(kueue.TEAMS)


def test_service_account_is_the_charts():
    accounts = [d for d in DOCS if d["kind"] == "ServiceAccount"]
    assert {d["metadata"]["name"] for d in accounts} == {HELM_VALUES["global"][
        "serviceAccountName"]}
    for account in accounts:  # the lake is reached with the chart's IAM role (IRSA)
        assert account["metadata"]["annotations"] == HELM_VALUES["serviceAccount"]["annotations"]


def test_least_privilege_in_its_own_namespace():
    for team in kueue.TEAMS:
        ns, own = f"team-{team}", (f"team-{team}", "robolake")
        # the run worker starts, watches and removes the team's step Jobs, reads their pods
        for verb in ("create", "get", "list", "watch", "delete"):
            assert allowed(RUN_WORKER, ns, "batch", "jobs", verb)
        assert allowed(RUN_WORKER, ns, "", "pods/log", "get")
        assert not allowed(RUN_WORKER, ns, "", "pods", "create")
        assert not allowed(RUN_WORKER, ns, "kubeflow.org", "pytorchjobs", "create")
        # the team's own pods submit PyTorchJobs and read their queue, nothing more
        for verb in ("create", "get", "list", "watch"):
            assert allowed(own, ns, "kubeflow.org", "pytorchjobs", verb)
        for verb in ("get", "list", "watch"):
            assert allowed(own, ns, "kueue.x-k8s.io", "localqueues", verb)
            assert allowed(RUN_WORKER, ns, "kueue.x-k8s.io", "localqueues", verb)
        for group, resource, verb in [("batch", "jobs", "create"), ("", "secrets", "get"),
                                      ("", "configmaps", "get"), ("", "pods", "delete"),
                                      ("kueue.x-k8s.io", "localqueues", "update"),
                                      ("rbac.authorization.k8s.io", "rolebindings", "create")]:
            assert not allowed(own, ns, group, resource, verb), (team, resource, verb)
        for other in kueue.TEAMS:  # another team's namespace: nothing at all
            if other != team:
                assert not allowed(own, f"team-{other}", "kubeflow.org", "pytorchjobs", "get")
                assert not allowed(own, f"team-{other}", "", "pods", "list")
    rules = [r for d in DOCS if d["kind"] == "Role" for r in d["rules"]]
    assert not any("*" in r["verbs"] + r["resources"] + r["apiGroups"] for r in rules)
    assert not {"secrets", "configmaps", "serviceaccounts"} & {
        res for r in rules for res in r["resources"]}
    assert not any(d["kind"].startswith("Cluster") for d in DOCS)
