"""The rendered NetworkPolicies admit what the system needs and nothing else: an evaluator of the policies
(ingress only, as the manifests use) against the pods' labels and ports, for every kustomization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import KUSTOMIZATIONS, WORKLOAD_KINDS, named, of_kind, pod_spec, render


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist) against labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def pod_labels(docs: tuple[dict[str, Any], ...], workload: str) -> dict[str, str]:
    (match,) = [w for w in of_kind(docs, *WORKLOAD_KINDS) if w["metadata"]["name"] == workload]
    labels: dict[str, str] = match["spec"]["template"]["metadata"]["labels"]
    return labels


def port_number(docs: tuple[dict[str, Any], ...], workload: str, port_name: str) -> int:
    (match,) = [w for w in of_kind(docs, *WORKLOAD_KINDS) if w["metadata"]["name"] == workload]
    (container,) = pod_spec(match)["containers"]
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port_name]
    return int(number)


def may_connect(
    docs: tuple[dict[str, Any], ...],
    source: dict[str, str] | None,
    source_namespace: dict[str, str],
    workload: str,
    port_name: str,
) -> bool:
    """Whether a pod with labels `source` (None: outside any pod, e.g. a client) in a namespace with labels
    `source_namespace` may open `port_name` of `workload`'s pods, under NetworkPolicy semantics."""
    target, namespace = pod_labels(docs, workload), named(docs, "Namespace", "coded-invnet")
    own_namespace = {
        "kubernetes.io/metadata.name": namespace["metadata"]["name"],
        **namespace["metadata"]["labels"],
    }
    port = port_number(docs, workload, port_name)
    policies = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"] and selects(p["spec"]["podSelector"], target)
    ]
    assert policies, f"{workload}: no NetworkPolicy selects it, so it admits everything"

    def peer_admits(peer: dict[str, Any]) -> bool:
        if "ipBlock" in peer:
            return source is None
        if "namespaceSelector" in peer and not selects(peer["namespaceSelector"], source_namespace):
            return False
        if "namespaceSelector" not in peer and source_namespace != own_namespace:
            return False
        return "podSelector" not in peer or (source is not None and selects(peer["podSelector"], source))

    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            port_ok = not ports or any(p.get("port") in (port_name, port) for p in ports)
            peers = rule.get("from")
            if port_ok and (not peers or any(peer_admits(peer) for peer in peers)):
                return True
    return False


BACKENDS = ("worker", "encoder", "decoder")
OUTSIDE = {"kubernetes.io/metadata.name": "default"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}


def namespace_labels(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The labels a namespaceSelector sees on the project's namespace."""
    labels = named(docs, "Namespace", "coded-invnet")["metadata"]["labels"]
    return {"kubernetes.io/metadata.name": "coded-invnet"} | labels


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=str)
def test_clients_reach_only_the_frontend(kustomization: Path) -> None:
    docs = render(kustomization)
    namespace = namespace_labels(docs)
    frontend = pod_labels(docs, "frontend")
    assert may_connect(docs, None, OUTSIDE, "frontend", "grpc")
    assert may_connect(docs, {"app": "client"}, OUTSIDE, "frontend", "grpc")
    assert not may_connect(docs, None, OUTSIDE, "frontend", "metrics")
    assert may_connect(docs, {"app": "prometheus"}, MONITORING, "frontend", "metrics")
    for backend in BACKENDS:
        assert may_connect(docs, frontend, namespace, backend, "grpc"), backend
        assert not may_connect(docs, None, OUTSIDE, backend, "grpc"), backend
        assert not may_connect(docs, {"app": "client"}, OUTSIDE, backend, "grpc"), backend
        # Another pod of the namespace (or a frontend's labels in another namespace) is not the frontend.
        assert not may_connect(docs, {"app.kubernetes.io/name": "other"}, namespace, backend, "grpc"), backend
        assert not may_connect(docs, frontend, OUTSIDE, backend, "grpc"), backend
        assert not may_connect(docs, pod_labels(docs, "worker"), namespace, backend, "grpc"), backend
        assert not may_connect(docs, None, OUTSIDE, backend, "metrics"), backend
        assert may_connect(docs, {"app": "prometheus"}, MONITORING, backend, "metrics"), backend


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=str)
def test_only_the_chaos_overlay_lets_its_job_reach_the_backends(kustomization: Path) -> None:
    docs = render(kustomization)
    namespace = namespace_labels(docs)
    jobs = of_kind(docs, "Job")
    runner = (
        jobs[0]["spec"]["template"]["metadata"]["labels"]
        if jobs
        else {"app.kubernetes.io/name": "coded-invnet", "app.kubernetes.io/component": "chaos-runner"}
    )
    for backend in BACKENDS:
        assert may_connect(docs, runner, namespace, backend, "grpc") == bool(jobs), (backend, kustomization)
    assert may_connect(docs, runner, namespace, "frontend", "grpc")
