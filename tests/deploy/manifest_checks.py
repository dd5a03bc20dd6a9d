"""Checks over rendered Kubernetes manifests: schemas and the deployment's policies.

Each check takes the rendered objects (dicts, as `kubectl kustomize` prints them) and returns
a list of problems, each naming the object and the field: `Deployment/sidelight-api:
spec.template.spec.containers[sidelight].securityContext.readOnlyRootFilesystem: must be true`.
An empty list means the objects pass. The tests run every check on every overlay, and each
check on a deliberately broken copy, so that a check that cannot fail is caught.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prometheus
from pydantic import BaseModel, ValidationError

Obj = dict[str, Any]

# The Kubernetes version the manifests must hold for: the oldest minor still commonly
# supported by the managed offerings, and the first where the preStop `sleep` action is on by
# default. kubernetes-validate ships its OpenAPI schemas (pinned in constraints.txt).
KUBERNETES_VERSION = "1.30.0"

# The custom resources, validated by the projects' models: KEDA 2.16, Prometheus operator 0.80.
CUSTOM_MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus.PrometheusRule,
}

KUBECTL_HINT = (
    "kubectl is needed to render the manifests (`kubectl kustomize`, offline): install it, "
    "e.g. Debian's `kubernetes-client` or the binary from the Kubernetes release page, 1.27 "
    "or later"
)

MUTABLE_TAGS = {"latest", "stable", "main", "master", "edge", "nightly", "dev"}


class RenderError(Exception):
    pass


def render(directory: Path) -> list[Obj]:
    """The objects `kubectl kustomize DIRECTORY` prints."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError(KUBECTL_HINT)
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed:\n{done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def name_of(obj: Obj) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def _path(parts: Iterator[Any] | list[Any] | tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# --- schemas ---------------------------------------------------------------------------------


def schema_problems(objects: list[Obj], version: str = KUBERNETES_VERSION) -> list[str]:
    """Core kinds against Kubernetes' OpenAPI schemas (strict: unknown fields are errors);
    KEDA and Prometheus-operator kinds against their models (types, required fields), with a
    round trip that catches fields the model does not know. Any other kind is a problem: a
    kind no schema covers would pass unchecked."""
    problems: list[str] = []
    for obj in objects:
        model = CUSTOM_MODELS.get((obj.get("apiVersion", ""), obj.get("kind", "")))
        if model is not None:
            problems.extend(_custom_problems(obj, model))
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(
                f"{name_of(obj)}: apiVersion {obj.get('apiVersion')}: no schema for this kind "
                f"in Kubernetes {version} nor among the custom resources checked"
            )
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{name_of(obj)}: {_path(error.path) or '(top)'}: {error.message}")
    return problems


def _custom_problems(obj: Obj, model: type[BaseModel]) -> list[str]:
    try:
        parsed = model.model_validate(obj)
    except ValidationError as error:
        return [f"{name_of(obj)}: {_path(e['loc'])}: {e['msg']}" for e in error.errors()]
    again = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    return [f"{name_of(obj)}: {where}: {what}" for where, what in _differences(obj, again, ())]


def _differences(given: Any, known: Any, at: tuple[Any, ...]) -> Iterator[tuple[str, str]]:
    if isinstance(given, dict) and isinstance(known, dict):
        for key in given:
            if key not in known:
                yield _path((*at, key)), "unknown field"
            else:
                yield from _differences(given[key], known[key], (*at, key))
    elif isinstance(given, list) and isinstance(known, list) and len(given) == len(known):
        for index, (a, b) in enumerate(zip(given, known, strict=True)):
            yield from _differences(a, b, (*at, index))
    elif given != known:
        yield _path(at) or "(top)", f"read back as {known!r}, not {given!r}"


# --- pods ------------------------------------------------------------------------------------


def pod_templates(objects: list[Obj]) -> Iterator[tuple[Obj, str, Obj]]:
    """(object, path to its pod spec, pod template) for every workload."""
    for obj in objects:
        kind = obj.get("kind")
        if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            yield obj, "spec.template", obj["spec"]["template"]
        elif kind == "CronJob":
            yield (
                obj,
                "spec.jobTemplate.spec.template",
                obj["spec"]["jobTemplate"]["spec"]["template"],
            )
        elif kind == "Pod":
            yield obj, "", {"metadata": obj.get("metadata", {}), "spec": obj["spec"]}


def _containers(spec: Obj) -> Iterator[tuple[str, Obj]]:
    for group in ("initContainers", "containers"):
        for container in spec.get(group) or []:
            yield f"{group}[{container.get('name')}]", container


def _spec_path(base: str) -> str:
    return f"{base}.spec" if base else "spec"


def security_problems(objects: list[Obj]) -> list[str]:
    """Every pod: no service account token; a pod running Sidelight, no service links (a Service
    named sidelight would inject SIDELIGHT_PORT=tcp://..., which the server reads as its
    option); every container: non-root, read-only root, no
    privilege escalation, all capabilities dropped, seccomp RuntimeDefault, requests and
    limits of CPU and memory."""
    problems: list[str] = []
    for obj, base, template in pod_templates(objects):
        spec = template["spec"]
        where = _spec_path(base)
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name_of(obj)}: {where}.automountServiceAccountToken: must be false")
        runs_sidelight = any(
            str(c.get("image", "")).startswith("sidelight:") for _, c in _containers(spec)
        )
        if runs_sidelight and spec.get("enableServiceLinks") is not False:
            problems.append(f"{name_of(obj)}: {where}.enableServiceLinks: must be false")
        pod_security = spec.get("securityContext") or {}
        for label, container in _containers(spec):
            at = f"{name_of(obj)}: {where}.{label}"
            security = container.get("securityContext") or {}
            effective = {**pod_security, **security}.get  # the container's setting wins
            if effective("runAsNonRoot") is not True:
                problems.append(f"{at}.securityContext.runAsNonRoot: must be true")
            if effective("runAsUser") == 0:
                problems.append(f"{at}.securityContext.runAsUser: must not be 0 (root)")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}.securityContext.readOnlyRootFilesystem: must be true")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}.securityContext.allowPrivilegeEscalation: must be false")
            if security.get("privileged"):
                problems.append(f"{at}.securityContext.privileged: must not be true")
            if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{at}.securityContext.capabilities.drop: must hold ALL")
            if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
                problems.append(f"{at}.securityContext.seccompProfile.type: must be RuntimeDefault")
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(kind) or {}):
                        problems.append(f"{at}.resources.{kind}.{resource}: missing")
    return problems


def image_problems(objects: list[Obj]) -> list[str]:
    """Every image pinned: a digest, or a tag that is not a moving one (`latest`, ...)."""
    problems: list[str] = []
    for obj, base, template in pod_templates(objects):
        for label, container in _containers(template["spec"]):
            image = str(container.get("image", ""))
            at = f"{name_of(obj)}: {_spec_path(base)}.{label}.image"
            if "@sha256:" in image:
                continue
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            if not tag:
                problems.append(f"{at}: {image!r} has no tag or digest")
            elif tag in MUTABLE_TAGS:
                problems.append(f"{at}: {image!r} has the moving tag {tag!r}")
    return problems


def _serving_ports(objects: list[Obj], template: Obj, namespace: str | None) -> set[str]:
    """Names and numbers of the pod's ports that a Service sends traffic to (not metrics)."""
    labels = template.get("metadata", {}).get("labels") or {}
    ports: set[str] = set()
    for service in objects:
        if service.get("kind") != "Service" or _namespace(service) != namespace:
            continue
        selector = service["spec"].get("selector") or {}
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            continue
        for port in service["spec"].get("ports") or []:
            if port.get("name") != "metrics":
                ports.add(str(port.get("targetPort", port.get("port"))))
    return ports


def probe_problems(objects: list[Obj]) -> list[str]:
    """Long-running containers (Deployments, StatefulSets, DaemonSets) have a liveness probe;
    those a Service sends traffic to have a readiness probe too. Jobs need none."""
    problems: list[str] = []
    for obj, base, template in pod_templates(objects):
        if obj.get("kind") not in {"Deployment", "StatefulSet", "DaemonSet"}:
            continue
        serving = _serving_ports(objects, template, _namespace(obj))
        for label, container in _containers({"containers": template["spec"].get("containers")}):
            at = f"{name_of(obj)}: {_spec_path(base)}.{label}"
            if "livenessProbe" not in container:
                problems.append(f"{at}.livenessProbe: missing")
            own = {str(p.get("containerPort")) for p in container.get("ports") or []}
            own |= {str(p.get("name")) for p in container.get("ports") or [] if p.get("name")}
            if own & serving and "readinessProbe" not in container:
                problems.append(f"{at}.readinessProbe: missing (a Service sends it traffic)")
    return problems


def port_problems(objects: list[Obj]) -> list[str]:
    """Every container port and every Service port has a name; every Service selects pods and
    each of its ports targets a port those pods declare."""
    problems: list[str] = []
    pods = list(pod_templates(objects))
    for obj, base, template in pods:
        for label, container in _containers(template["spec"]):
            for index, port in enumerate(container.get("ports") or []):
                if not port.get("name"):
                    problems.append(
                        f"{name_of(obj)}: {_spec_path(base)}.{label}.ports[{index}].name: missing"
                    )
    for service in objects:
        if service.get("kind") != "Service":
            continue
        selector = service["spec"].get("selector") or {}
        selected = [
            template
            for obj, _, template in pods
            if _namespace(obj) == _namespace(service)
            and selector
            and all(
                (template["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items()
            )
        ]
        if not selected:
            problems.append(f"{name_of(service)}: spec.selector: selects no pod {selector}")
        declared: set[str] = set()
        for template in selected:
            for _, container in _containers(template["spec"]):
                for port in container.get("ports") or []:
                    declared.add(str(port.get("containerPort")))
                    if port.get("name"):
                        declared.add(str(port["name"]))
        for index, port in enumerate(service["spec"].get("ports") or []):
            at = f"{name_of(service)}: spec.ports[{index}]"
            if not port.get("name"):
                problems.append(f"{at}.name: missing")
            target = str(port.get("targetPort", port.get("port")))
            if selected and target not in declared:
                problems.append(f"{at}.targetPort: {target} is no port of the pods it selects")
    return problems


def _namespace(obj: Obj) -> str | None:
    namespace = obj.get("metadata", {}).get("namespace")
    return str(namespace) if namespace is not None else None


def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def network_policy_problems(objects: list[Obj]) -> list[str]:
    """Every pod is selected by NetworkPolicies that restrict both its ingress and egress."""
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"]
    problems: list[str] = []
    for obj, base, template in pod_templates(objects):
        labels = template.get("metadata", {}).get("labels") or {}
        types: set[str] = set()
        for policy in policies:
            if _namespace(policy) == _namespace(obj) and _selects(
                policy["spec"].get("podSelector") or {}, labels
            ):
                types |= set(policy["spec"].get("policyTypes") or ["Ingress"])
        for direction in ("Ingress", "Egress"):
            if direction not in types:
                where = f"{base}.metadata.labels" if base else "metadata.labels"
                problems.append(
                    f"{name_of(obj)}: {where}: no NetworkPolicy restricts this pod's "
                    f"{direction.lower()} ({labels})"
                )
    return problems


POLICY_CHECKS: dict[str, Callable[[list[Obj]], list[str]]] = {
    "security": security_problems,
    "images": image_problems,
    "probes": probe_problems,
    "ports": port_problems,
    "network_policies": network_policy_problems,
}


# --- metric names ----------------------------------------------------------------------------

_METRIC = re.compile(r"\bsidelight_[a-z0-9_]+\b")
_SUFFIXES = ("_bucket", "_sum", "_count", "_total")


def exported_metric_names(source: Path) -> set[str]:
    """Every `"sidelight_..."` string literal in the service's code: the declared metrics."""
    names: set[str] = set()
    for path in source.rglob("*.py"):
        names.update(re.findall(r"[\"'](sidelight_[a-z0-9_]+)[\"']", path.read_text()))
    return names


def metric_problems(where: str, text: str, exported: set[str]) -> list[str]:
    """The `sidelight_*` series `text` names that the service does not export."""
    problems: list[str] = []
    for name in sorted(set(_METRIC.findall(text))):
        bases = {name} | {name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)}
        if not any(b in exported or f"{b}_total" in exported for b in bases):
            problems.append(f"{where}: {name}: no such metric in service/sidelight")
    return problems
