"""The dev overlay (deploy/overlays/dev) made playable by `podman kube play` on this machine.

No Kubernetes API server can be had here; podman 4.3 plays Pods, Deployments, ConfigMaps and
volumes from the rendered manifests themselves. What it cannot take is adapted below, and each
adaptation is recorded with its reason (`Playable.adaptations`), so that the test says exactly
what of the manifests ran as written and what did not:

- Kinds podman does not play (Namespace, ServiceAccount, Service, NetworkPolicy,
  HorizontalPodAutoscaler, PodDisruptionBudget, CronJob, StatefulSet) are left out; the Redis
  StatefulSet becomes a Deployment with its volume claim as an emptyDir, and PostgreSQL is the
  test's own server on the host (the Secret's URL points there).
- Pods share the host's network (podman's bridge networking does not work on this kernel), so
  the Services' names become 127.0.0.1 in the Secrets' URLs, every listening port is moved to a
  free one through the same SIDELIGHT_* variables and redis-server options an operator would
  use, and the containers' port declarations go (podman refuses them on the host network).
- Secrets become podman secrets (JSON of base64 values, the form podman 4.3 reads for
  `secretKeyRef`); Secret volumes become host folders holding the same files (podman 4.3 panics
  on `secret:` volumes), owned by the pods' group with the Secret's mode, as fsGroup and
  defaultMode would make them.
- emptyDir volumes become fresh host folders writable by the pod's user: podman 4.3 makes an
  emptyDir a volume owned by root with mode 0755, where Kubernetes makes it world-writable, so
  the non-root init container could not write the demo models into it.
- `$(VAR)` references in a container's command and args are expanded from its environment, as
  the kubelet does and podman 4.3 does not (Redis's `--requirepass $(REDIS_PASSWORD)`).
- Pods with init containers restart OnFailure instead of Always (podman 4.3 restarts a
  finished init container under Always).
- Images: the Redis image is a local stand-in built from Debian's redis-server
  (tests/image/redis.Containerfile), since no registry can be reached.

Probes, preStop hooks, resource limits, seccomp and capabilities are passed through as written;
podman runs or ignores them as its kube play documents (`man podman-kube-play`).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

# Kinds podman kube play (4.3) has no counterpart for; what each would have done in a cluster.
NOT_PLAYED = {
    "Namespace": "namespaces: podman has none",
    "ServiceAccount": "identities: podman has none (the pods mount no token anyway)",
    "Service": "service discovery and load balancing: pods reach each other on 127.0.0.1",
    "NetworkPolicy": "network isolation: podman enforces no policies",
    "HorizontalPodAutoscaler": "autoscaling: no controller",
    "PodDisruptionBudget": "disruption budgets: no evictions",
    "CronJob": "scheduled jobs: no controller (the test plays its job's pod once, by hand)",
}


@dataclass(frozen=True)
class Ports:
    """The free loopback ports the pods listen on (they share the host's network)."""

    redis: int
    api_grpc: int
    api_metrics: int
    worker_metrics: int


@dataclass
class Playable:
    documents: list[dict[str, Any]]  # what `podman kube play` gets
    secrets: dict[str, dict[str, str]]  # podman secret name -> its Kubernetes data, decoded
    secret_folders: dict[str, Path]  # Secret name (and items) -> host folder holding its files
    adaptations: list[str] = field(default_factory=list)
    # CronJob name -> the pod one of its runs would start, adapted like the Deployments' pods
    cron_runs: dict[str, dict[str, Any]] = field(default_factory=dict)


def playable(
    rendered: list[dict[str, Any]],
    *,
    ports: Ports,
    audit_url: str,
    redis_image: str,
    secret_files: Mapping[str, Mapping[str, bytes]],
    folder: Path,
) -> Playable:
    """`rendered`: the dev overlay's objects (`kubectl kustomize`); `secret_files`: the Secrets
    the overlay references but does not generate (the audit keys), by name and key, as an
    operator creates them; `folder`: where Secret volumes are written."""
    result = Playable([], {}, {})
    note = result.adaptations.append
    secrets = {
        doc["metadata"]["name"]: _decoded(doc) for doc in rendered if doc["kind"] == "Secret"
    }
    for name, files in secret_files.items():
        secrets[name] = {key: value.decode() for key, value in files.items()}
    _point_secrets_at_loopback(secrets, ports, audit_url, note)
    for doc in rendered:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind in NOT_PLAYED:
            note(f"{kind}/{name} not played: {NOT_PLAYED[kind]}")
            if kind == "CronJob":
                result.cron_runs[name] = _cron_run(doc, secrets, folder, result, note)
        elif kind == "Secret":
            pass  # a podman secret (below)
        elif kind == "ConfigMap":
            result.documents.append(doc)
        elif kind == "StatefulSet" and name == "sidelight-postgresql":
            note(
                "StatefulSet/sidelight-postgresql not played: the audit log goes to the test's "
                "own PostgreSQL on the host (the sidelight-postgresql Secret's url)"
            )
        elif kind == "StatefulSet" and name == "sidelight-redis":
            result.documents.append(_redis(doc, ports, redis_image, note))
        elif kind == "Deployment":
            result.documents.append(_sidelight(doc, ports, note))
        else:
            raise ValueError(f"{kind}/{name}: no rule to play it with podman")
    for doc in result.documents:
        if doc["kind"] == "Deployment":
            _secret_volumes_to_folders(doc, secrets, folder, result.secret_folders, note)
            _empty_dirs_to_folders(doc, folder, note)
            _expand_references(doc, secrets, note)
    referenced = {
        ref["secretKeyRef"]["name"]
        for doc in result.documents
        if doc["kind"] == "Deployment"
        for container in _containers(doc)
        for env in container.get("env", [])
        if (ref := env.get("valueFrom")) and "secretKeyRef" in ref
    }
    result.secrets = {name: secrets[name] for name in sorted(referenced)}
    return result


def podman_secret(data: Mapping[str, str]) -> bytes:
    """A Secret's data in the form podman 4.3's kube play reads for secretKeyRef: one JSON
    object of base64 values (not a Kubernetes Secret document)."""
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
    return json.dumps(encoded).encode()


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    data = {key: base64.b64decode(value).decode() for key, value in secret.get("data", {}).items()}
    data.update(secret.get("stringData", {}))
    return data


def _point_secrets_at_loopback(
    secrets: dict[str, dict[str, str]], ports: Ports, audit_url: str, note: Any
) -> None:
    redis = secrets["sidelight-redis"]
    parts = urlsplit(redis["url"])
    credentials = parts.netloc.rpartition("@")[0]
    redis["url"] = urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{ports.redis}"))
    note(f"Secret sidelight-redis: url {parts.hostname}:{parts.port} -> 127.0.0.1:{ports.redis}")
    secrets["sidelight-postgresql"]["url"] = audit_url
    note("Secret sidelight-postgresql: url -> the test's PostgreSQL on 127.0.0.1")


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A Deployment's or a Job template's containers, init containers first."""
    spec = doc["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _cron_run(
    cronjob: dict[str, Any],
    secrets: dict[str, dict[str, str]],
    folder: Path,
    result: Playable,
    note: Any,
) -> dict[str, Any]:
    """The pod one run of `cronjob` starts, as a Pod podman plays (restartPolicy Never)."""
    name = cronjob["metadata"]["name"]
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"]["template"])
    job = {"metadata": {"name": f"CronJob/{name}"}, "spec": {"template": template}}
    template["spec"]["hostNetwork"] = True
    _secret_volumes_to_folders(job, secrets, folder, result.secret_folders, note)
    _empty_dirs_to_folders(job, folder, note)
    _expand_references(job, secrets, note)
    for container in _containers(job):
        if container["image"].startswith("sidelight:"):
            container["imagePullPolicy"] = "Never"
    note(f"CronJob/{name}: its job's pod played once as Pod/{name}-run, on the host's network")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-run", "labels": template["metadata"].get("labels", {})},
        "spec": template["spec"],
    }


def _redis(doc: dict[str, Any], ports: Ports, image: str, note: Any) -> dict[str, Any]:
    spec = copy.deepcopy(doc["spec"])
    claims = spec.pop("volumeClaimTemplates", [])
    spec.pop("serviceName", None)
    template = spec["template"]["spec"]
    template["hostNetwork"] = True
    for claim in claims:
        template.setdefault("volumes", []).append(
            {"name": claim["metadata"]["name"], "emptyDir": {}}
        )
    (container,) = template["containers"]
    note(f"StatefulSet/sidelight-redis: a Deployment; image {container['image']} -> {image}")
    container["image"] = image
    container["imagePullPolicy"] = "Never"
    container["args"] = [*container["args"], "--port", str(ports.redis)]
    _move_port(container, "redis", ports.redis)
    note(f"redis: the host's network, --port {ports.redis}; its data volume an emptyDir")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": copy.deepcopy(doc["metadata"]),
        "spec": spec,
    }


def _sidelight(doc: dict[str, Any], ports: Ports, note: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    name = doc["metadata"]["name"]
    template = doc["spec"]["template"]["spec"]
    template["hostNetwork"] = True
    main = next(c for c in template["containers"] if c["name"] == "sidelight")
    if name == "sidelight-api":
        moved = {"port": ("grpc", ports.api_grpc), "metrics_port": ("metrics", ports.api_metrics)}
    elif name == "sidelight-worker":
        moved = {"metrics_port": ("metrics", ports.worker_metrics)}
    else:
        raise ValueError(f"Deployment/{name}: no rule to play it with podman")
    for option, (port_name, number) in moved.items():
        main["env"].append({"name": f"SIDELIGHT_{option.upper()}", "value": str(number)})
        _move_port(main, port_name, number)
    moves = ", ".join(f"SIDELIGHT_{o.upper()}={n}" for o, (_, n) in moved.items())
    note(f"Deployment/{name}: the host's network, {moves}")
    if template.get("initContainers"):
        template["restartPolicy"] = "OnFailure"
        note(
            f"Deployment/{name}: restartPolicy OnFailure, not Always: podman 4.3 applies the "
            "pod's policy to init containers too, restarts the finished one, then fails to "
            "remove it"
        )
    for container in _containers(doc):
        if container["image"].startswith("sidelight:"):
            container["imagePullPolicy"] = "Never"  # built here: never look for a registry
    return doc


def _move_port(container: dict[str, Any], name: str, number: int) -> None:
    """Point every probe that names the port, or its number, at its new number. The port
    declarations go: on the host's network there is nothing to map, and podman refuses them
    there ("PortMappings can only be used with Bridge or slirp4netns networking")."""
    (declared,) = [p for p in container.get("ports", []) if p["name"] == name]
    old = declared["containerPort"]
    container["ports"] = [p for p in container["ports"] if p["name"] != name]
    if not container["ports"]:
        del container["ports"]
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if not probe:
            continue
        for handler in ("grpc", "httpGet", "tcpSocket"):
            action = probe.get(handler)
            if action and action.get("port") in (name, old):
                action["port"] = number


def _secret_volumes_to_folders(
    doc: dict[str, Any],
    secrets: dict[str, dict[str, str]],
    folder: Path,
    written: dict[str, Path],
    note: Any,
) -> None:
    template = doc["spec"]["template"]["spec"]
    group = template.get("securityContext", {}).get("fsGroup")
    kept = []
    dropped = set()
    for volume in template.get("volumes", []):
        source = volume.get("secret")
        if source is None:
            kept.append(volume)
            continue
        name = source["secretName"]
        if name not in secrets:
            if not source.get("optional"):
                raise ValueError(f"volume {volume['name']}: Secret {name} is not given")
            dropped.add(volume["name"])
            note(f"{doc['metadata']['name']}: optional Secret {name} absent, volume left out")
            continue
        data = secrets[name]
        key = name
        if "items" in source:  # only these keys, under their paths
            data = {item["path"]: data[item["key"]] for item in source["items"]}
            key = f"{name}-{'-'.join(sorted(data))}"
        path = written.get(key) or _write_secret(folder / key, data, source, group)
        written[key] = path
        kept.append({"name": volume["name"], "hostPath": {"path": str(path), "type": "Directory"}})
        note(f"{doc['metadata']['name']}: Secret volume {name} -> a host folder of its files")
    template["volumes"] = kept
    for container in _containers(doc):
        mounts = container.get("volumeMounts", [])
        container["volumeMounts"] = [m for m in mounts if m["name"] not in dropped]


_REFERENCE = re.compile(r"\$\((\w+)\)")


def _expand_references(doc: dict[str, Any], secrets: dict[str, dict[str, str]], note: Any) -> None:
    for container in _containers(doc):
        values = {}
        for env in container.get("env", []):
            if "value" in env:
                values[env["name"]] = env["value"]
            elif "secretKeyRef" in env.get("valueFrom", {}):
                ref = env["valueFrom"]["secretKeyRef"]
                values[env["name"]] = secrets[ref["name"]][ref["key"]]
        for field_name in ("command", "args"):
            words = container.get(field_name)
            if not words:
                continue
            expanded = [_REFERENCE.sub(lambda m: values.get(m[1], m[0]), w) for w in words]  # noqa: B023
            if expanded != words:
                container[field_name] = expanded
                where = f"{doc.get('metadata', {}).get('name', 'job')}/{container['name']}"
                note(f"{where}: $(VAR) in {field_name} expanded")


def _empty_dirs_to_folders(doc: dict[str, Any], folder: Path, note: Any) -> None:
    name = doc["metadata"]["name"]
    template = doc["spec"]["template"]["spec"]
    for volume in template.get("volumes", []):
        if "emptyDir" not in volume:
            continue
        path = folder / "empty" / name / volume["name"]
        path.mkdir(parents=True)
        path.chmod(0o777)  # what the kubelet makes of an emptyDir
        del volume["emptyDir"]
        volume["hostPath"] = {"path": str(path), "type": "Directory"}
        note(f"{name}: emptyDir {volume['name']} -> a fresh host folder, mode 0777")


def _write_secret(
    path: Path, data: Mapping[str, str], source: Mapping[str, Any], group: int | None
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    mode = int(source.get("defaultMode", 0o644))
    for key, value in data.items():
        file = path / key
        file.write_text(value)
        if group is not None and os.geteuid() == 0:
            os.chown(file, 0, group)
        file.chmod(mode)
    path.chmod(0o755)
    return path
