"""deploy/: every kustomization renders, every object validates against its schema, and the
policies hold; each check is also run on a broken copy and must name the object and field."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifest_checks import (
    KUBECTL_HINT,
    POLICY_CHECKS,
    Obj,
    RenderError,
    exported_metric_names,
    metric_problems,
    name_of,
    pod_templates,
    render,
    schema_problems,
)
from sidelight.cli.main import build_parser
from sidelight.jobs.redis_queue import GROUP

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Everything a user applies: the base, each overlay, the example and the sanity Job.
TARGETS = ["base", "overlays/dev", "overlays/production", "examples/torchserve", "jobs"]


@functools.cache
def rendered(target: str) -> tuple[Obj, ...]:
    return tuple(render(DEPLOY / target))


def objects(target: str) -> list[Obj]:
    """A private copy, free to break."""
    return copy.deepcopy(list(rendered(target)))


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)


def container(obj: Obj, name: str = "sidelight") -> Obj:
    template = next(t for o, _, t in pod_templates([obj]))
    return next(c for c in template["spec"]["containers"] if c["name"] == name)


@pytest.fixture(scope="module", autouse=True)
def kubectl() -> None:
    if shutil.which("kubectl") is None:
        pytest.fail(KUBECTL_HINT)


@pytest.mark.parametrize("target", TARGETS)
def test_renders(target: str) -> None:
    kinds = {o["kind"] for o in rendered(target)}
    assert kinds, f"{target} renders nothing"


def test_render_failure_names_the_file(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    (tmp_path / "deploy/base/hpa.yaml").unlink()
    with pytest.raises(RenderError, match=r"hpa\.yaml"):
        render(tmp_path / "deploy/overlays/dev")


def test_a_broken_file_is_named_from_disk_to_report(tmp_path: Path) -> None:
    """The whole path on a broken copy of deploy/: a misspelt field in base/api.yaml and a
    root container in base/worker.yaml, rendered through the dev overlay."""
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    api = tmp_path / "deploy/base/api.yaml"
    api.write_text(api.read_text().replace("terminationGracePeriodSeconds:", "terminationGrace:"))
    worker = tmp_path / "deploy/base/worker.yaml"
    worker.write_text(worker.read_text().replace("runAsUser: 10001", "runAsUser: 0"))
    objs = render(tmp_path / "deploy/overlays/dev")
    assert any(
        p.startswith("Deployment/sidelight-api: spec.template.spec:") and "terminationGrace" in p
        for p in schema_problems(objs)
    )
    assert (
        "Deployment/sidelight-worker: spec.template.spec.containers[sidelight].securityContext"
        ".runAsUser: must not be 0 (root)"
    ) in POLICY_CHECKS["security"](objs)


def test_the_overlays_hold_what_they_promise() -> None:
    dev, production = objects("overlays/dev"), objects("overlays/production")
    assert {o["kind"] for o in dev} >= {"StatefulSet", "Deployment", "CronJob", "NetworkPolicy"}
    assert {o["metadata"]["name"] for o in dev if o["kind"] == "StatefulSet"} == {
        "sidelight-redis",
        "sidelight-postgresql",
    }
    assert all(
        find(dev, "Deployment", n)["spec"]["replicas"] == 1
        for n in ("sidelight-api", "sidelight-worker")
    )
    assert not [o for o in production if o["kind"] in {"StatefulSet", "Secret"}], (
        "production must reach Redis and PostgreSQL through Secrets the operator creates"
    )
    for name in ("sidelight-api", "sidelight-worker"):
        deployment = find(production, "Deployment", name)
        assert container(deployment)["image"] == "sidelight:0.1.0-cuda"
        assert container(deployment)["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert deployment["spec"]["template"]["spec"]["tolerations"]
    assert {o["kind"] for o in production} >= {
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PrometheusRule",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    torchserve = objects("examples/torchserve")
    api = find(torchserve, "Deployment", "sidelight-api")
    assert "initContainers" not in api["spec"]["template"]["spec"]
    labels = find(torchserve, "Deployment", "torchserve")["spec"]["template"]["metadata"]["labels"]
    assert labels.get("sidelight-client") == "true", "TorchServe's handler must reach the API"


# --- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_schemas(target: str) -> None:
    assert schema_problems(objects(target)) == []


def test_custom_resources_are_checked() -> None:
    """The production overlay holds every custom kind: none of them may pass unvalidated."""
    kinds = {(o["apiVersion"], o["kind"]) for o in objects("overlays/production")}
    assert ("keda.sh/v1alpha1", "ScaledObject") in kinds
    assert ("monitoring.coreos.com/v1", "PrometheusRule") in kinds


def _break_schema(mutate: Callable[[list[Obj]], None]) -> list[str]:
    objs = objects("overlays/production")
    mutate(objs)
    return schema_problems(objs)


SCHEMA_BREAKS: list[tuple[str, Callable[[list[Obj]], None], str]] = [
    (
        "unknown core field",
        lambda objs: container(find(objs, "Deployment", "sidelight-api")).update(
            imagePullPolicyy="Always"
        ),
        "Deployment/sidelight-api: spec.template.spec.containers[0]",
    ),
    (
        "wrong core type",
        lambda objs: find(objs, "Deployment", "sidelight-worker")["spec"].update(replicas="two"),
        "Deployment/sidelight-worker: spec.replicas",
    ),
    (
        "missing required core field",
        lambda objs: find(objs, "Service", "sidelight")["spec"]["ports"][0].pop("port"),
        "Service/sidelight: spec.ports[0]",
    ),
    (
        "wrong KEDA type",
        lambda objs: find(objs, "ScaledObject", "sidelight-worker")["spec"].update(
            minReplicaCount="zero"
        ),
        "ScaledObject/sidelight-worker: spec.minReplicaCount",
    ),
    (
        "unknown KEDA field",
        lambda objs: find(objs, "ScaledObject", "sidelight-worker")["spec"].update(minReplicas=0),
        "ScaledObject/sidelight-worker: spec.minReplicas: unknown field",
    ),
    (
        "missing KEDA field",
        lambda objs: find(objs, "ScaledObject", "sidelight-worker")["spec"].pop("scaleTargetRef"),
        "ScaledObject/sidelight-worker: spec.scaleTargetRef",
    ),
    (
        "unknown Prometheus-operator field",
        lambda objs: find(objs, "PrometheusRule", "sidelight")["spec"]["groups"][0]["rules"][
            0
        ].update(severity="page"),
        "PrometheusRule/sidelight: spec.groups[0].rules[0].severity: unknown field",
    ),
    (
        "wrong ServiceMonitor type",
        lambda objs: find(objs, "ServiceMonitor", "sidelight")["spec"].update(endpoints="metrics"),
        "ServiceMonitor/sidelight: spec.endpoints",
    ),
    (
        "a kind no schema covers",
        lambda objs: objs.append(
            {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
        ),
        "Gadget/g: apiVersion example.com/v1: no schema",
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "expected"), SCHEMA_BREAKS, ids=[c[0] for c in SCHEMA_BREAKS]
)
def test_schema_check_catches(
    case: str, mutate: Callable[[list[Obj]], None], expected: str
) -> None:
    problems = _break_schema(mutate)
    assert any(expected in p for p in problems), f"{case}: {problems}"


# --- policies --------------------------------------------------------------------------------


# The sanity Job is applied into a namespace where the base already runs: its pods are judged
# beside the base's NetworkPolicies and Services.
CONTEXT = {"jobs": "base"}


@pytest.mark.parametrize("check", sorted(POLICY_CHECKS))
@pytest.mark.parametrize("target", TARGETS)
def test_policy(target: str, check: str) -> None:
    context = objects(CONTEXT[target]) if target in CONTEXT else []
    assert POLICY_CHECKS[check](objects(target) + context) == []


def _api(objs: list[Obj]) -> Obj:
    return find(objs, "Deployment", "sidelight-api")


def _set(obj: Obj, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj.setdefault(part, {})
    if value is None:
        obj.pop(last, None)
    else:
        obj[last] = value


POLICY_BREAKS: list[tuple[str, str, Callable[[list[Obj]], None], str]] = [
    (
        "security",
        "token mounted",
        lambda objs: _api(objs)["spec"]["template"]["spec"].update(
            automountServiceAccountToken=True
        ),
        "Deployment/sidelight-api: spec.template.spec.automountServiceAccountToken",
    ),
    (
        "security",
        "service links",
        lambda objs: _api(objs)["spec"]["template"]["spec"].pop("enableServiceLinks"),
        "Deployment/sidelight-api: spec.template.spec.enableServiceLinks: must be false",
    ),
    (
        "security",
        "root",
        lambda objs: (
            _set(container(_api(objs)), "securityContext.runAsNonRoot", None),
            _set(_api(objs)["spec"]["template"]["spec"], "securityContext.runAsNonRoot", None),
        ),
        "Deployment/sidelight-api:"
        " spec.template.spec.containers[sidelight].securityContext.runAsNonRoot",
    ),
    (
        "security",
        "uid 0",
        lambda objs: _set(container(_api(objs)), "securityContext.runAsUser", 0),
        "containers[sidelight].securityContext.runAsUser",
    ),
    (
        "security",
        "writable root",
        lambda objs: _set(
            container(find(objs, "Deployment", "sidelight-worker")),
            "securityContext.readOnlyRootFilesystem",
            False,
        ),
        "Deployment/sidelight-worker:"
        " spec.template.spec.containers[sidelight].securityContext.readOnlyRootFilesystem",
    ),
    (
        "security",
        "escalation",
        lambda objs: _set(container(_api(objs)), "securityContext.allowPrivilegeEscalation", None),
        "securityContext.allowPrivilegeEscalation",
    ),
    (
        "security",
        "capabilities kept",
        lambda objs: _set(container(_api(objs)), "securityContext.capabilities.drop", ["NET_RAW"]),
        "securityContext.capabilities.drop",
    ),
    (
        "security",
        "no seccomp",
        lambda objs: (
            _set(container(_api(objs)), "securityContext.seccompProfile", None),
            _set(_api(objs)["spec"]["template"]["spec"], "securityContext.seccompProfile", None),
        ),
        "securityContext.seccompProfile.type",
    ),
    (
        "security",
        "no memory limit",
        lambda objs: container(find(objs, "StatefulSet", "sidelight-redis"), "redis")["resources"][
            "limits"
        ].pop("memory"),
        "StatefulSet/sidelight-redis: spec.template.spec.containers[redis].resources.limits.memory",
    ),
    (
        "security",
        "init container without limits",
        lambda objs: _api(objs)["spec"]["template"]["spec"]["initContainers"][0].pop("resources"),
        "Deployment/sidelight-api:"
        " spec.template.spec.initContainers[build-demo-models].resources.requests.cpu",
    ),
    (
        "security",
        "CronJob container without requests",
        lambda objs: container(find(objs, "CronJob", "sidelight-audit-verify"), "verify")[
            "resources"
        ].pop("requests"),
        "CronJob/sidelight-audit-verify:"
        " spec.jobTemplate.spec.template.spec.containers[verify].resources.requests",
    ),
    (
        "images",
        "latest",
        lambda objs: container(_api(objs)).update(image="sidelight:latest"),
        "Deployment/sidelight-api: spec.template.spec.containers[sidelight].image:"
        " 'sidelight:latest'",
    ),
    (
        "images",
        "no tag",
        lambda objs: container(
            find(objs, "StatefulSet", "sidelight-postgresql"), "postgresql"
        ).update(image="registry.example:5000/postgres"),
        "StatefulSet/sidelight-postgresql: spec.template.spec.containers[postgresql].image",
    ),
    (
        "probes",
        "no liveness",
        lambda objs: container(find(objs, "Deployment", "sidelight-worker")).pop("livenessProbe"),
        "Deployment/sidelight-worker: spec.template.spec.containers[sidelight].livenessProbe:"
        " missing",
    ),
    (
        "probes",
        "serving without readiness",
        lambda objs: container(_api(objs)).pop("readinessProbe"),
        "Deployment/sidelight-api: spec.template.spec.containers[sidelight].readinessProbe:"
        " missing",
    ),
    (
        "ports",
        "unnamed container port",
        lambda objs: container(_api(objs))["ports"][1].pop("name"),
        "Deployment/sidelight-api: spec.template.spec.containers[sidelight].ports[1].name: missing",
    ),
    (
        "ports",
        "unnamed Service port",
        lambda objs: find(objs, "Service", "sidelight")["spec"]["ports"][1].pop("name"),
        "Service/sidelight: spec.ports[1].name: missing",
    ),
    (
        "ports",
        "Service port the pods lack",
        lambda objs: container(_api(objs))["ports"][0].update(containerPort=50052, name="grpc2"),
        "Service/sidelight: spec.ports[0].targetPort: grpc is no port",
    ),
    (
        "ports",
        "Service selecting nothing",
        lambda objs: find(objs, "Service", "sidelight")["spec"]["selector"].update(
            {"app.kubernetes.io/component": "apu"}
        ),
        "Service/sidelight: spec.selector: selects no pod",
    ),
    (
        "network_policies",
        "a pod no policy selects",
        lambda objs: find(objs, "NetworkPolicy", "sidelight-redis")["spec"]["podSelector"][
            "matchLabels"
        ].update({"app.kubernetes.io/name": "redis"}),
        "StatefulSet/sidelight-redis: spec.template.metadata.labels: no NetworkPolicy restricts"
        " this pod's ingress",
    ),
    (
        "network_policies",
        "egress left open",
        lambda objs: [
            o["spec"].update(policyTypes=["Ingress"]) for o in objs if o["kind"] == "NetworkPolicy"
        ],
        "CronJob/sidelight-audit-verify: spec.jobTemplate.spec.template.metadata.labels: no"
        " NetworkPolicy restricts this pod's egress",
    ),
]


@pytest.mark.parametrize(
    ("check", "case", "mutate", "expected"),
    POLICY_BREAKS,
    ids=[f"{c[0]}-{c[1]}" for c in POLICY_BREAKS],
)
def test_policy_check_catches(
    check: str, case: str, mutate: Callable[[list[Obj]], None], expected: str
) -> None:
    objs = objects("overlays/dev")
    mutate(objs)
    problems = POLICY_CHECKS[check](objs)
    assert any(expected in p for p in problems), f"{case}: {problems}"


def test_every_policy_check_has_a_broken_case() -> None:
    assert {c[0] for c in POLICY_BREAKS} == set(POLICY_CHECKS)


# --- agreement with the service --------------------------------------------------------------


def _config(objs: list[Obj], key: str) -> dict[str, Any]:
    config_map = next(
        o
        for o in objs
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("sidelight-config")
    )
    loaded: dict[str, Any] = yaml.safe_load(config_map["data"][key])
    return loaded


def drain_problems(objs: list[Obj]) -> list[str]:
    """terminationGracePeriodSeconds covers the preStop sleep, the server's grace period (API)
    or the job grace (workers), and a margin of at least 5 s."""
    problems = []
    for name, key, budget_key in (
        ("sidelight-api", "serve.yaml", "grace_period"),
        ("sidelight-worker", "worker.yaml", "job_grace"),
    ):
        deployment = find(objs, "Deployment", name)
        spec = deployment["spec"]["template"]["spec"]
        sleep = (
            ((container(deployment).get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}
        ).get("seconds", 0)
        needed = sleep + float(_config(objs, key)[budget_key]) + 5
        if spec.get("terminationGracePeriodSeconds", 30) < needed:
            problems.append(
                f"{name_of(deployment)}: spec.template.spec.terminationGracePeriodSeconds: "
                f"{spec.get('terminationGracePeriodSeconds', 30)} < {needed} (preStop {sleep} s + "
                f"{budget_key} + 5 s)"
            )
    return problems


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/production"])
def test_termination_grace_covers_the_drain(target: str) -> None:
    assert drain_problems(objects(target)) == []


def test_drain_check_catches_a_longer_grace() -> None:
    objs = objects("overlays/dev")
    config_map = next(o for o in objs if o["kind"] == "ConfigMap")
    config_map["data"]["worker.yaml"] = config_map["data"]["worker.yaml"].replace(
        "job_grace: 20", "job_grace: 60"
    )
    assert any(
        "Deployment/sidelight-worker: spec.template.spec.terminationGracePeriodSeconds" in p
        for p in drain_problems(objs)
    )


def test_keda_follows_the_queue() -> None:
    """The trigger's stream and group are the ones the workers read, its per-replica target
    is the worker's process count, and the lag trigger is the one that may wake from zero."""
    objs = objects("overlays/production")
    worker = _config(objs, "worker.yaml")
    scaled = find(objs, "ScaledObject", "sidelight-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "sidelight-worker"
    modes = set()
    for trigger in scaled["spec"]["triggers"]:
        metadata = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        assert metadata["stream"] == f"{worker['queue_prefix']}:jobs"
        assert metadata["consumerGroup"] == GROUP
        assert trigger["authenticationRef"]["name"] == "sidelight-redis"
        for mode in ("lagCount", "pendingEntriesCount"):
            if mode in metadata:
                modes.add(mode)
                assert int(metadata[mode]) == worker["processes"]
    assert modes == {"lagCount", "pendingEntriesCount"}


def test_probes_name_the_health_services() -> None:
    api = container(_api(objects("overlays/dev")))
    assert api["livenessProbe"]["grpc"]["service"] == ""
    assert api["readinessProbe"]["grpc"]["service"] == "sidelight.v1.Explainer"
    assert api["startupProbe"]["failureThreshold"] * api["startupProbe"]["periodSeconds"] >= 300


# --- alerts and the dashboard use real metric names ------------------------------------------


@functools.cache
def _exported() -> frozenset[str]:
    return frozenset(exported_metric_names(ROOT / "service/sidelight"))


def test_alerts_and_dashboard_use_exported_metrics() -> None:
    rule = find(objects("overlays/production"), "PrometheusRule", "sidelight")
    exprs = json.dumps([r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]])
    dashboard = (DEPLOY / "observability/dashboards/sidelight.json").read_text()
    json.loads(dashboard)
    assert metric_problems("PrometheusRule/sidelight", exprs, set(_exported())) == []
    assert metric_problems("dashboards/sidelight.json", dashboard, set(_exported())) == []
    assert "sidelight_rpc_duration_seconds_bucket" in exprs


def test_metric_check_catches_an_unknown_name() -> None:
    problems = metric_problems(
        "PrometheusRule/x", "rate(sidelight_job_oldest_age_seconds[5m])", set(_exported())
    )
    assert problems == [
        "PrometheusRule/x: sidelight_job_oldest_age_seconds: no such metric in service/sidelight"
    ]


# --- the configuration and arguments are the CLI's -------------------------------------------


def _flags(*command: str) -> set[str]:
    """The long flags of `sidelight COMMAND...`, as the CLI's parser declares them."""
    parser: argparse.ArgumentParser = build_parser()
    for word in command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return {o for a in parser._actions for o in a.option_strings if o.startswith("--")}


def config_problems(objs: list[Obj]) -> list[str]:
    """Every key of the configuration files is a long flag of its command (underscores for
    dashes), and every `--flag` a container passes exists."""
    problems = []
    config_map = next(o for o in objs if o["metadata"]["name"].startswith("sidelight-config"))
    for key, command in (("serve.yaml", "serve"), ("worker.yaml", "worker")):
        flags = _flags(command)
        for name in yaml.safe_load(config_map["data"][key]):
            if "--" + name.replace("_", "-") not in flags:
                problems.append(f"{name_of(config_map)}: data.{key}.{name}: no --{name} flag")
    for obj, base, template in pod_templates(objs):
        for label, spec in (
            (label, c)
            for group in ("initContainers", "containers")
            for label, c in (
                (f"{group}[{c['name']}]", c) for c in template["spec"].get(group) or []
            )
        ):
            if not str(spec.get("image", "")).startswith("sidelight:"):
                continue
            args = [str(a) for a in spec.get("args") or []]
            words = [a for a in args[:2] if not a.startswith("-")]
            flags = _flags(*words)
            for arg in args:
                if arg.startswith("--") and arg.split("=", 1)[0] not in flags:
                    problems.append(
                        f"{name_of(obj)}: {base}.spec.{label}.args: `sidelight "
                        f"{' '.join(words)}` has no {arg.split('=', 1)[0]}"
                    )
    return problems


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/production"])
def test_configuration_and_arguments_are_the_clis(target: str) -> None:
    objs = objects(target) + objects("jobs")
    assert config_problems(objs) == []


def test_configuration_check_catches_a_wrong_key() -> None:
    objs = objects("overlays/dev")
    config_map = next(o for o in objs if o["metadata"]["name"].startswith("sidelight-config"))
    config_map["data"]["worker.yaml"] += "max_batch_size: 8\n"  # a serve flag, not a worker's
    container(find(objs, "CronJob", "sidelight-audit-verify"), "verify")["args"].append("--fix")
    problems = config_problems(objs)
    assert any("data.worker.yaml.max_batch_size: no --max_batch_size" in p for p in problems)
    assert any("CronJob/sidelight-audit-verify" in p and "has no --fix" in p for p in problems)


# --- the variants docs/deploy.md tells users to make -----------------------------------------


def _variant(tmp_path: Path, resource: str, components: list[str]) -> list[Obj]:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "sidelight",
                # kustomize takes relative paths only
                "resources": [os.path.relpath(DEPLOY / resource, tmp_path)],
                "components": [os.path.relpath(DEPLOY / c, tmp_path) for c in components],
            }
        )
    )
    return render(tmp_path)


def test_production_scaled_to_zero(tmp_path: Path) -> None:
    objs = _variant(tmp_path, "overlays/production", ["components/keda-scale-to-zero"])
    assert find(objs, "ScaledObject", "sidelight-worker")["spec"]["minReplicaCount"] == 0
    assert schema_problems(objs) == []


def test_dev_with_keda_and_monitoring(tmp_path: Path) -> None:
    objs = _variant(tmp_path, "overlays/dev", ["components/keda", "observability"])
    assert schema_problems(objs) == []
    assert all(check(objs) == [] for check in POLICY_CHECKS.values())
    dashboard = find(objs, "ConfigMap", "sidelight-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "sidelight"
