#!/usr/bin/env python3
"""Offline checks of sio-cluster's deployment files, driven by tests/manifests/check.sh.

Runs inside check.sh's pinned venv (PyYAML, kubernetes-validate). Subcommands, in the order
check.sh calls them:

  prometheusrule [--write]  the PrometheusRule in k8s/components/monitoring holds exactly the
                            groups of deploy/prometheus/alerts.yml (--write regenerates it)
  manifests                 strict schema validation of every rendered overlay (core kinds),
                            policy checks (probes, security, drain timing, references, selectors,
                            a NetworkPolicy simulation); writes the prometheus-operator objects
                            for validate-crds.mjs and what the manifests expect of the binaries
  static                    compose file, Prometheus configs, Grafana dashboard and provisioning,
                            Dockerfiles, metric names; writes the dashboard's PromQL as a rule
                            file for `promtool check rules`
  binaries                  every SIO_* variable, flag, port and probe path named anywhere against
                            the real binaries: `--help`, then each configuration started on
                            loopback and its routes requested, plus a real Prometheus scraping
                            them with deploy/prometheus/local.yml

Every failure is printed as FAIL with what to change; the exit status is 1 if there was any.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
PROMETHEUS_RULE = ROOT / "k8s/components/monitoring/prometheusrule.yaml"
KNOWN_METRICS = HERE / "known-metrics.txt"
# Oldest Kubernetes the manifests support (the preStop `sleep` action is on by default from
# 1.30) and the newest schema kubernetes-validate ships.
KUBE_VERSIONS = ("1.30", "1.37")
CRD_GROUPS = ("monitoring.coreos.com",)
BINARIES = ("sio-node", "sio-proxy")
# Variables of the container environment that are not flags of the binaries.
NON_FLAG_ENV = {"POD_IP", "RUST_LOG", "RUST_BACKTRACE"}
DRAIN_MARGIN_SECONDS = 5

problems: list[str] = []
warnings: list[str] = []


def fail(message: str, fix: str | None = None) -> None:
    problems.append(message + (f"\n      fix: {fix}" if fix else ""))


def warn(message: str) -> None:
    warnings.append(message)


def note(message: str) -> None:
    """Progress, shown with SIO_CHECK_VERBOSE=1 only."""
    if os.environ.get("SIO_CHECK_VERBOSE") == "1":
        print(f"ok: {message}", flush=True)


def finish() -> int:
    for w in warnings:
        print(f"WARN: {w}")
    for p in problems:
        print(f"FAIL: {p}")
    return 1 if problems else 0


def rel(path: Path | str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def parse_duration(text: str) -> float:
    """humantime-style durations as the binaries accept them (`30s`, `100ms`, `2m`, `1h 5m`)."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total, pos = 0.0, 0
    for m in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h)", text):
        if m.start() != pos:
            raise ValueError(text)
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(text)
    return total


def port_of(addr: str) -> int | None:
    m = re.search(r":(\d+)$", addr.strip())
    return int(m.group(1)) if m else None


def labels_match(selector: dict | None, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# PrometheusRule <-> alerts.yml
# ---------------------------------------------------------------------------------------------

RULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml -- edit that file, then run
#   tests/manifests/check.sh --write-prometheusrule
# tests/manifests/check.sh fails while the two differ.
"""


def expected_prometheus_rule() -> dict:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "sio-cluster",
            "labels": {
                "app.kubernetes.io/name": "sio-cluster",
                "app.kubernetes.io/instance": "sio-cluster",
                "app.kubernetes.io/component": "alerts",
            },
        },
        "spec": {"groups": groups},
    }


def cmd_prometheusrule(args: argparse.Namespace) -> int:
    expected = expected_prometheus_rule()
    if args.write:
        PROMETHEUS_RULE.write_text(
            RULE_HEADER + yaml.safe_dump(expected, sort_keys=False, width=100, allow_unicode=True)
        )
        print(f"wrote {rel(PROMETHEUS_RULE)}")
        return 0
    if not PROMETHEUS_RULE.exists():
        fail(f"{rel(PROMETHEUS_RULE)} is missing", "tests/manifests/check.sh --write-prometheusrule")
        return finish()
    actual = yaml.safe_load(PROMETHEUS_RULE.read_text())
    if actual.get("spec", {}).get("groups") != expected["spec"]["groups"]:
        fail(
            f"{rel(PROMETHEUS_RULE)} does not hold the same alert groups as {rel(ALERTS)}",
            "edit deploy/prometheus/alerts.yml only, then run tests/manifests/check.sh --write-prometheusrule",
        )
    return finish()


# ---------------------------------------------------------------------------------------------
# Rendered manifests
# ---------------------------------------------------------------------------------------------


class Variant:
    """One rendered kustomization (an overlay, or an overlay plus components)."""

    def __init__(self, name: str, source_dir: Path, rendered: Path):
        self.name = name
        self.source_dir = source_dir
        self.docs = load_yaml_docs(rendered)
        self.namespace = next(
            (d["metadata"].get("namespace") for d in self.docs if d["metadata"].get("namespace")), "default"
        )

    def of_kind(self, *kinds: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") in kinds]

    def get(self, kind: str, name: str) -> dict | None:
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] == name), None)

    def workloads(self) -> list[dict]:
        return self.of_kind("Deployment", "StatefulSet", "DaemonSet")

    def where(self, doc: dict) -> str:
        return f"[{self.name}] {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"

    def out_of_band_secrets(self) -> dict[str, set[str]]:
        """Secrets an overlay documents as created out of band: a secrets.env.example beside its
        kustomization (or one it builds on) names the keys of Secret `sio-secrets`."""
        seen: set[Path] = set()

        def walk(d: Path) -> Path | None:
            d = d.resolve()
            if d in seen or not (d / "kustomization.yaml").exists():
                return None
            seen.add(d)
            if (d / "secrets.env.example").exists():
                return d / "secrets.env.example"
            k = yaml.safe_load((d / "kustomization.yaml").read_text()) or {}
            for r in k.get("resources") or []:
                found = walk(d / r)
                if found:
                    return found
            return None

        example = walk(self.source_dir)
        if not example:
            return {}
        keys = {
            line.split("=", 1)[0].strip()
            for line in example.read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")
        }
        return {"sio-secrets": keys}


def binary_of(container: dict) -> str | None:
    return container["name"] if container["name"] in BINARIES else None


def container_ports(workload: dict) -> dict[str, int]:
    ports = {}
    for c in workload["spec"]["template"]["spec"]["containers"]:
        for p in c.get("ports") or []:
            ports[p.get("name") or str(p["containerPort"])] = p["containerPort"]
    return ports


def resolve_port(port, ports: dict[str, int]) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    return ports.get(port)


def validate_schemas(v: Variant, crds: list[dict]) -> None:
    import kubernetes_validate

    for doc in v.docs:
        group = doc.get("apiVersion", "").split("/")[0]
        if group in CRD_GROUPS:
            crds.append({"source": v.name, "object": doc})
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top level)"
                fail(
                    f"{v.where(doc)}: {path}: {e.message} (Kubernetes {version} schema, strict)",
                    "correct the field in k8s/ (base, overlay or patch); an unknown field is a typo "
                    "or belongs to another API version",
                )
                break
            except kubernetes_validate.SchemaNotFoundError as e:
                fail(f"{v.where(doc)}: {e.message}", "use an API version that Kubernetes 1.30+ serves")
                break


def check_workload(v: Variant, w: dict, surface: dict) -> None:
    where = v.where(w)
    meta_labels = w["metadata"].get("labels") or {}
    template = w["spec"]["template"]
    pod_labels = template["metadata"].get("labels") or {}
    ps = template["spec"]
    required_labels = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component"]
    is_sio = any(binary_of(c) for c in ps["containers"])
    if is_sio:
        required_labels += ["app.kubernetes.io/part-of", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"]
    for label in required_labels:
        if label not in meta_labels or label not in pod_labels:
            fail(f"{where}: label {label} missing on the object or its pod template",
                 "add it (k8s/base/kustomization.yaml `labels:` or the manifest)")
    if not labels_match(w["spec"].get("selector"), pod_labels):
        fail(f"{where}: spec.selector does not match the pod template's labels")

    psc = ps.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        fail(f"{where}: pod securityContext.runAsNonRoot must be true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail(f"{where}: pod securityContext.seccompProfile.type must be RuntimeDefault")
    if ps.get("automountServiceAccountToken") is not False:
        fail(f"{where}: automountServiceAccountToken must be false (nothing here talks to the API server)")
    if ps.get("enableServiceLinks") is not False:
        fail(f"{where}: enableServiceLinks must be false",
             "service links inject SIO_NODE_*/SIO_PROXY_* variables that collide with the binaries' flag variables")

    env_names = {e["name"] for c in ps["containers"] for e in c.get("env") or []}
    annotations = template["metadata"].get("annotations") or {}
    ports = container_ports(w)
    if annotations.get("prometheus.io/scrape") == "true":
        if resolve_port(annotations.get("prometheus.io/port", ""), ports) not in ports.values():
            fail(f"{where}: annotation prometheus.io/port={annotations.get('prometheus.io/port')} is not a container port {sorted(ports.values())}")
        if annotations.get("prometheus.io/path", "/metrics") != "/metrics":
            fail(f"{where}: annotation prometheus.io/path must be /metrics")

    for c in ps["containers"]:
        cwhere = f"{where} container {c['name']}"
        csc = c.get("securityContext") or {}
        if csc.get("allowPrivilegeEscalation") is not False:
            fail(f"{cwhere}: securityContext.allowPrivilegeEscalation must be false")
        if csc.get("readOnlyRootFilesystem") is not True:
            fail(f"{cwhere}: securityContext.readOnlyRootFilesystem must be true")
        if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
            fail(f"{cwhere}: securityContext.capabilities.drop must contain ALL")
        if csc.get("privileged"):
            fail(f"{cwhere}: must not be privileged")
        res = c.get("resources") or {}
        for path in ("requests.cpu", "requests.memory", "limits.memory"):
            a, b = path.split(".")
            if not (res.get(a) or {}).get(b):
                fail(f"{cwhere}: resources.{path} is not set")
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                fail(f"{cwhere}: no {probe}")
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
            fail(f"{cwhere}: image {image!r} has no pinned tag", "set it with kustomize `images:`")

        binary = binary_of(c)
        if not binary:
            continue
        version = meta_labels.get("app.kubernetes.io/version")
        if image != f"sio-cluster/{binary}:{version}":
            fail(f"{cwhere}: image {image!r} is not sio-cluster/{binary}:{version} (app.kubernetes.io/version)",
                 "keep kustomize `images:` newTag and the version label in step")
        for probe in ("startupProbe",):
            if probe not in c:
                fail(f"{cwhere}: no {probe}")
        if not ps.get("topologySpreadConstraints"):
            fail(f"{where}: no topologySpreadConstraints")

        # Environment as the container will see it: envFrom ConfigMaps, then env.
        env: dict[str, str] = {}
        sources: dict[str, str] = {}
        for ef in c.get("envFrom") or []:
            ref = ef.get("configMapRef") or ef.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in ef else "Secret"
            obj = v.get(kind, ref["name"])
            if obj is None:
                fail(f"{cwhere}: envFrom {kind} {ref['name']} does not exist in the rendered overlay")
                continue
            for k, val in (obj.get("data") or {}).items():
                env[k] = str(val) if kind == "ConfigMap" else "<secret>"
                sources[k] = f"{kind} {ref['name']}"
        defined: set[str] = set()
        oob = v.out_of_band_secrets()
        for e in c.get("env") or []:
            name = e["name"]
            for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                if ref not in defined:
                    fail(f"{cwhere}: env {name} uses $({ref}), which is not defined before it")
            defined.add(name)
            if "value" in e:
                env[name] = e["value"]
            vf = e.get("valueFrom") or {}
            if "fieldRef" in vf:
                env[name] = {"status.podIP": "127.0.0.1", "metadata.name": "check-pod-0"}.get(
                    vf["fieldRef"]["fieldPath"], "<field>")
            if "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                secret = v.get("Secret", ref["name"])
                if secret is not None:
                    keys = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
                    if ref["key"] not in keys:
                        fail(f"{cwhere}: env {name}: Secret {ref['name']} has no key {ref['key']} (has {sorted(keys)})")
                elif ref["name"] in oob:
                    if ref["key"] not in oob[ref["name"]]:
                        fail(f"{cwhere}: env {name}: key {ref['key']} of the out-of-band Secret {ref['name']} is not documented in secrets.env.example",
                             "add it to the overlay's secrets.env.example")
                else:
                    fail(f"{cwhere}: env {name}: Secret {ref['name']} is neither in the overlay nor documented (secrets.env.example)")
                env[name] = "<secret>"
            if "configMapKeyRef" in vf:
                env[name] = "<configmap>"
            sources[name] = "env"

        # Drain timing: SIGKILL must come after preStop + the binary's own shutdown grace.
        grace_var = "SIO_SHUTDOWN_GRACE" if binary == "sio-node" else "SIO_PROXY_SHUTDOWN_GRACE"
        try:
            grace = parse_duration(env.get(grace_var, "30s"))
        except ValueError:
            fail(f"{cwhere}: {grace_var}={env.get(grace_var)!r} is not a duration")
            grace = 30
        pre_stop = (c.get("lifecycle") or {}).get("preStop")
        if not pre_stop:
            fail(f"{cwhere}: no lifecycle.preStop (give endpoints time to update before SIGTERM)")
        pre_stop_seconds = (pre_stop or {}).get("sleep", {}).get("seconds", 0)
        if "exec" in (pre_stop or {}):
            cmd = pre_stop["exec"].get("command") or []
            if len(cmd) >= 2 and cmd[-2].endswith("sleep"):
                pre_stop_seconds = float(cmd[-1])
        tgps = ps.get("terminationGracePeriodSeconds", 30)
        if tgps < pre_stop_seconds + grace + DRAIN_MARGIN_SECONDS:
            fail(f"{where}: terminationGracePeriodSeconds {tgps} <= preStop {pre_stop_seconds}s + {grace_var} {grace:g}s + {DRAIN_MARGIN_SECONDS}s margin",
                 "raise terminationGracePeriodSeconds or shorten the grace: the kubelet would SIGKILL mid-drain")

        # Listen addresses agree with the declared container ports.
        named = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        listen_vars = {"sio-node": {"SIO_LISTEN": "http"},
                       "sio-proxy": {"SIO_PROXY_LISTEN": "http", "SIO_PROXY_METRICS_LISTEN": "metrics"}}[binary]
        for var, port_name in listen_vars.items():
            if port_name not in named:
                fail(f"{cwhere}: no container port named {port_name!r}")
            elif var in env and port_of(env[var]) != named[port_name]:
                fail(f"{cwhere}: {var}={env[var]} but container port {port_name} is {named[port_name]}")
        if binary == "sio-node" and "SIO_ADVERTISE_ADDR" in env and port_of(env["SIO_ADVERTISE_ADDR"]) != named.get("http"):
            fail(f"{cwhere}: SIO_ADVERTISE_ADDR port does not match container port http {named.get('http')}")

        probes = []
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = (c.get(kind) or {}).get("httpGet")
            if get:
                probes.append({"kind": kind, "port_name": get["port"] if isinstance(get["port"], str) else None,
                               "port": resolve_port(get["port"], named), "path": get.get("path", "/")})
                if resolve_port(get["port"], named) not in named.values():
                    fail(f"{cwhere}: {kind} port {get['port']!r} is not a container port")
        s = surface.setdefault(binary, {"env_sets": [], "ports": {}, "probes": []})
        flags = [a.split("=", 1)[0][2:] for a in (c.get("command") or [])[1:] + (c.get("args") or []) if a.startswith("--")]
        s.setdefault("flags", []).extend({"source": where, "flag": f} for f in flags)
        s["env_sets"].append({"source": f"{where}", "env": env,
                              "names": {k: sources.get(k, "env") for k in env if k not in NON_FLAG_ENV}})
        for pname, p in named.items():
            prev = s["ports"].setdefault(pname, p)
            if prev != p:
                fail(f"{cwhere}: container port {pname} is {p} here and {prev} elsewhere")
        for p in probes:
            if p not in s["probes"]:
                s["probes"].append(p)


def check_services(v: Variant) -> None:
    workloads = v.workloads()
    for svc in v.of_kind("Service"):
        where = v.where(svc)
        spec = svc["spec"]
        matched = [w for w in workloads if labels_match({"matchLabels": spec.get("selector") or {}},
                                                        w["spec"]["template"]["metadata"].get("labels") or {})]
        if not spec.get("selector"):
            continue
        if not matched:
            fail(f"{where}: selector {spec['selector']} matches no pod template in the overlay")
            continue
        ports: dict[str, int] = {}
        for w in matched:
            ports.update(container_ports(w))
        for p in spec.get("ports") or []:
            target = p.get("targetPort", p["port"])
            if resolve_port(target, ports) not in ports.values():
                fail(f"{where}: port {p.get('name')} targets {target!r}, which the selected pods do not expose ({ports})")
    node_svc = v.get("Service", "sio-node")
    if node_svc is None:
        fail(f"[{v.name}] no Service sio-node (the nodes' headless Service for --backends-dns)")
    else:
        if node_svc["spec"].get("clusterIP") != "None":
            fail(f"{v.where(node_svc)}: must be headless (clusterIP: None): the proxy needs one DNS record per pod")
        if node_svc["spec"].get("publishNotReadyAddresses") is not True:
            fail(f"{v.where(node_svc)}: publishNotReadyAddresses must be true",
                 "draining nodes must stay resolvable while they still hold live sessions")
    lb = v.get("Service", "sio-proxy")
    if lb is None or lb["spec"].get("type") != "LoadBalancer":
        fail(f"[{v.name}] Service sio-proxy must exist with type LoadBalancer")
    else:
        proxy = v.get("Deployment", "sio-proxy")
        ports = container_ports(proxy) if proxy else {}
        if not any(p["port"] == 80 and resolve_port(p.get("targetPort"), ports) == 4000 for p in lb["spec"]["ports"]):
            fail(f"{v.where(lb)}: needs port 80 -> the proxy's container port 4000")
    for d in v.of_kind("Deployment"):
        if d["metadata"]["name"] == "sio-proxy" and (d["spec"].get("replicas") or 1) < 2:
            fail(f"{v.where(d)}: run at least 2 proxy replicas")

    # The proxies' DNS discovery points at the headless Service, on its port.
    proxy = v.get("Deployment", "sio-proxy")
    if proxy:
        for c in proxy["spec"]["template"]["spec"]["containers"]:
            env = {}
            for ef in c.get("envFrom") or []:
                cm = v.get("ConfigMap", (ef.get("configMapRef") or {}).get("name", ""))
                env.update((cm or {}).get("data") or {})
            env.update({e["name"]: e.get("value") for e in c.get("env") or [] if "value" in e})
            for entry in filter(None, (env.get("SIO_PROXY_BACKENDS_DNS") or "").split(",")):
                host, _, port = entry.strip().rpartition(":")
                svc = v.get("Service", host.split(".")[0])
                if svc is None:
                    fail(f"{v.where(proxy)}: SIO_PROXY_BACKENDS_DNS={entry}: no Service {host.split('.')[0]} in the overlay")
                elif not any(str(p["port"]) == port for p in svc["spec"]["ports"]):
                    fail(f"{v.where(proxy)}: SIO_PROXY_BACKENDS_DNS={entry}: Service {svc['metadata']['name']} has no port {port}")
                elif svc["spec"].get("clusterIP") != "None":
                    fail(f"{v.where(proxy)}: SIO_PROXY_BACKENDS_DNS={entry}: Service is not headless (one cluster IP hides the pods)")


def check_pdbs_hpas(v: Variant) -> None:
    workloads = v.workloads()
    for pdb in v.of_kind("PodDisruptionBudget"):
        if not any(labels_match(pdb["spec"].get("selector"), w["spec"]["template"]["metadata"].get("labels") or {}) for w in workloads):
            fail(f"{v.where(pdb)}: selector matches no workload")
    for name in ("sio-node", "sio-proxy"):
        if not any(labels_match(p["spec"].get("selector"), {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": "sio-cluster"})
                   for p in v.of_kind("PodDisruptionBudget")):
            fail(f"[{v.name}] no PodDisruptionBudget covers {name}")
    known = known_metrics()
    for hpa in v.of_kind("HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        target = v.get(ref["kind"], ref["name"])
        if target is None:
            fail(f"{v.where(hpa)}: scaleTargetRef {ref['kind']}/{ref['name']} is not in the overlay")
        elif "replicas" in target["spec"]:
            fail(f"{v.where(hpa)}: {ref['kind']}/{ref['name']} still sets spec.replicas",
                 "remove it in overlays with an HPA (every `kubectl apply` would reset the HPA's count)")
        window = (((hpa["spec"].get("behavior") or {}).get("scaleDown") or {}).get("stabilizationWindowSeconds"))
        if window is None or window < 300:
            fail(f"{v.where(hpa)}: behavior.scaleDown.stabilizationWindowSeconds should be >= 300 (each scale-down reconnects a node's clients)")
        for m in hpa["spec"].get("metrics") or []:
            if m["type"] in ("Pods", "Object", "External"):
                name = m[m["type"].lower()]["metric"]["name"]
                if name not in known:
                    fail(f"{v.where(hpa)}: custom metric {name} is not in {rel(KNOWN_METRICS)}")


# --- NetworkPolicy simulation ------------------------------------------------------------------


class Peer:
    def __init__(self, name: str, namespace: str | None, labels: dict | None = None, ip: str | None = None):
        self.name, self.namespace, self.labels, self.ip = name, namespace, labels or {}, ip

    @property
    def ns_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


def peer_matches(rule_peer: dict, peer: Peer, policy_ns: str) -> bool:
    if "ipBlock" in rule_peer:
        if peer.ip is None:
            return False
        ip = ipaddress.ip_address(peer.ip)
        block = rule_peer["ipBlock"]
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except") or [])
    if peer.namespace is None:  # outside the cluster: only ipBlocks select it
        return False
    if "namespaceSelector" in rule_peer:
        if not labels_match(rule_peer["namespaceSelector"], peer.ns_labels):
            return False
    elif peer.namespace != policy_ns:
        return False
    if "podSelector" in rule_peer:
        return labels_match(rule_peer["podSelector"], peer.labels)
    return True


def port_matches(rule_ports: list | None, port: int, proto: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != proto:
            continue
        if "port" not in p:
            return True
        lo, hi = p["port"], p.get("endPort", p["port"])
        if isinstance(lo, int) and lo <= port <= hi:
            return True
    return False


def allowed(v: Variant, src: Peer, dst: Peer, port: int, proto: str = "TCP") -> bool:
    policies = v.of_kind("NetworkPolicy")
    ns = v.namespace
    for direction, pod, other, key in (("Egress", src, dst, "egress"), ("Ingress", dst, src, "ingress")):
        if pod.namespace != ns:
            continue  # not governed by this overlay's policies
        selecting = [p for p in policies if direction in (p["spec"].get("policyTypes") or ["Ingress"])
                     and labels_match(p["spec"].get("podSelector"), pod.labels)]
        if not selecting:
            continue
        ok = False
        for p in selecting:
            for rule in p["spec"].get(key) or []:
                peers = rule.get("to" if key == "egress" else "from")
                if (peers is None or any(peer_matches(rp, other, ns) for rp in peers)) and port_matches(rule.get("ports"), port, proto):
                    ok = True
        if not ok:
            return False
    return True


def check_network_policies(v: Variant) -> None:
    ns = v.namespace
    pods = {w["metadata"]["name"]: w["spec"]["template"]["metadata"].get("labels") or {} for w in v.workloads()}
    for pol in v.of_kind("NetworkPolicy"):
        sel = pol["spec"].get("podSelector") or {}
        if sel and not any(labels_match(sel, l) for l in pods.values()):
            fail(f"{v.where(pol)}: podSelector matches no pod of the overlay")
        for key, side in (("ingress", "from"), ("egress", "to")):
            for rule in pol["spec"].get(key) or []:
                for rp in rule.get(side) or []:
                    if "podSelector" in rp and "namespaceSelector" not in rp and rp["podSelector"].get("matchLabels"):
                        if not any(labels_match(rp["podSelector"], l) for l in pods.values()):
                            # Redis lives outside the prod overlay: a rule for it there is dead.
                            fail(f"{v.where(pol)}: {key} peer {rp['podSelector']} matches no pod of the overlay")
    if not v.of_kind("NetworkPolicy"):
        fail(f"[{v.name}] no NetworkPolicy")
        return
    node = Peer("sio-node", ns, pods.get("sio-node"))
    proxy = Peer("sio-proxy", ns, pods.get("sio-proxy"))
    client = Peer("internet client", None, ip="203.0.113.7")
    prometheus = Peer("Prometheus (namespace monitoring)", "monitoring", {"app.kubernetes.io/name": "prometheus"})
    stranger = Peer("a pod in another namespace", "other", {"app": "x"})
    api_client = Peer("an API client pod (sio-cluster.io/api-client=true)", "other", {"sio-cluster.io/api-client": "true"})
    dns = Peer("cluster DNS", "kube-system", {"k8s-app": "kube-dns"})
    internet = Peer("the internet", None, ip="198.51.100.9")
    expect = [
        (client, proxy, 4000, True), (client, node, 3000, False), (client, proxy, 9091, False),
        (proxy, node, 3000, True), (proxy, node, 22, False), (node, proxy, 4000, False),
        (prometheus, node, 3000, True), (prometheus, proxy, 9091, True),
        (stranger, node, 3000, False), (stranger, proxy, 9091, False), (api_client, node, 3000, True),
        (node, internet, 443, False), (proxy, internet, 443, False),
    ]
    checks = [(a, b, p, "TCP", want) for a, b, p, want in expect]
    checks += [(x, dns, 53, proto, True) for x in (node, proxy) for proto in ("UDP", "TCP")]
    redis_pods = {n: l for n, l in pods.items() if l.get("app.kubernetes.io/name") == "redis"}
    if redis_pods:
        redis = Peer("redis", ns, next(iter(redis_pods.values())))
        checks += [(node, redis, 6379, "TCP", True), (proxy, redis, 6379, "TCP", False),
                   (client, redis, 6379, "TCP", False), (redis, node, 3000, "TCP", False),
                   (stranger, redis, 6379, "TCP", False)]
    else:
        # External Redis: the nodes' egress to 6379 must name an ipBlock; the proxies get none.
        cidrs = [rp["ipBlock"]["cidr"] for pol in v.of_kind("NetworkPolicy")
                 if labels_match(pol["spec"].get("podSelector"), node.labels)
                 for rule in pol["spec"].get("egress") or [] if port_matches(rule.get("ports"), 6379, "TCP")
                 for rp in rule.get("to") or [] if "ipBlock" in rp]
        if not cidrs:
            fail(f"[{v.name}] no Redis in the overlay and no egress ipBlock to port 6379 for sio-node",
                 "allow the external Redis CIDR (k8s/overlays/prod/networkpolicy-redis.yaml)")
        else:
            ext = Peer("external Redis", None, ip=str(next(ipaddress.ip_network(cidrs[0]).hosts())))
            checks += [(node, ext, 6379, "TCP", True), (proxy, ext, 6379, "TCP", False)]
    for src, dst, port, proto, want in checks:
        got = allowed(v, src, dst, port, proto)
        if got != want:
            fail(f"[{v.name}] NetworkPolicies {'allow' if got else 'deny'} {src.name} -> {dst.name}:{port}/{proto}; expected {'allow' if want else 'deny'}",
                 "see k8s/base/networkpolicies.yaml: clients -> proxy -> nodes -> Redis only, plus DNS and Prometheus")


def check_monitoring_objects(v: Variant) -> None:
    services = v.of_kind("Service")
    for sm in v.of_kind("ServiceMonitor"):
        matched = [s for s in services if labels_match(sm["spec"].get("selector"), s["metadata"].get("labels") or {})]
        if not matched:
            fail(f"{v.where(sm)}: selector matches no Service")
            continue
        for s in matched:
            names = {p.get("name") for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in names:
                    fail(f"{v.where(sm)}: endpoint port {ep.get('port')!r} is not a port name of Service {s['metadata']['name']} ({sorted(names)})")
            job = (s["metadata"].get("labels") or {}).get(sm["spec"].get("jobLabel", ""), s["metadata"]["name"])
            if job not in BINARIES:
                fail(f"{v.where(sm)}: scraped series would get job={job!r}; alerts and dashboard expect sio-node / sio-proxy",
                     "set jobLabel: app.kubernetes.io/name")
    for pr in v.of_kind("PrometheusRule"):
        if pr["spec"].get("groups") != yaml.safe_load(ALERTS.read_text())["groups"]:
            fail(f"{v.where(pr)}: groups differ from deploy/prometheus/alerts.yml",
                 "tests/manifests/check.sh --write-prometheusrule")


def cmd_manifests(args: argparse.Namespace) -> int:
    crds: list[dict] = []
    surface: dict = {}
    for name, source_dir, rendered in args.variant:
        v = Variant(name, Path(source_dir), Path(rendered))
        seen = set()
        for d in v.docs:
            key = (d.get("kind"), d["metadata"].get("namespace"), d["metadata"].get("name"))
            if key in seen:
                fail(f"{v.where(d)}: defined twice")
            seen.add(key)
        validate_schemas(v, crds)
        note(f"[{name}] {len(v.docs)} objects validated against Kubernetes {' and '.join(KUBE_VERSIONS)} (strict)")
        for w in v.workloads():
            check_workload(v, w, surface)
        for b in BINARIES:
            if not any(any(binary_of(c) == b for c in w["spec"]["template"]["spec"]["containers"]) for w in v.workloads()):
                fail(f"[{v.name}] no workload runs {b}")
        check_services(v)
        check_pdbs_hpas(v)
        check_network_policies(v)
        check_monitoring_objects(v)
    Path(args.crds_out).write_text(json.dumps(crds))
    Path(args.surface_out).write_text(json.dumps(surface, indent=1))
    return finish()


# ---------------------------------------------------------------------------------------------
# deploy/: compose, Prometheus, Grafana, Dockerfiles; metric names
# ---------------------------------------------------------------------------------------------


def known_metrics() -> dict[str, tuple[str, str]]:
    out = {}
    for line in KNOWN_METRICS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, mtype, binary, *_ = line.split()
            out[name] = (mtype, binary)
    return out


def metric_names_in(expr: str) -> set[str]:
    # Label names inside {...} and strings never start with sio_/process_ here; strip strings
    # anyway so a label value cannot be mistaken for a metric.
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"\b((?:sio|process)_[a-z0-9_]+)\b", expr))


def check_metric_names(names: set[str], where: str) -> None:
    known = known_metrics()
    for n in sorted(names):
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if n in known:
            continue
        if base in known and known[base][0] == "histogram":
            continue
        fail(f"{where}: metric {n} is not in {rel(KNOWN_METRICS)}",
             "use a metric the binaries export, or add it to the list (and check it against live /metrics)")


GRAFANA_VARS = {
    "$__rate_interval": "1m", "${__rate_interval}": "1m", "$__interval": "1m", "${__interval}": "1m",
    "$__range": "1h", "${__range}": "1h",
}


def check_grafana(promql_out: Path) -> None:
    path = ROOT / "deploy/grafana/sio-cluster.json"
    try:
        dash = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{rel(path)}: not valid JSON: {e}")
        return
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            fail(f"{rel(path)}: no {key}")
    variables = {t["name"] for t in (dash.get("templating") or {}).get("list", [])}
    if "datasource" not in variables:
        fail(f"{rel(path)}: needs a `datasource` template variable (so the dashboard imports anywhere)")
    panels = []

    def walk(ps):
        for p in ps:
            panels.append(p)
            walk(p.get("panels") or [])

    walk(dash.get("panels") or [])
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        fail(f"{rel(path)}: duplicate panel ids")
    rules, names = [], set()
    for p in panels:
        if p.get("type") == "row":
            continue
        title = p.get("title", "?")
        ds = p.get("datasource") or {}
        if ds.get("uid") != "${datasource}":
            fail(f"{rel(path)}: panel {title!r} does not use the ${{datasource}} variable")
        if not p.get("gridPos"):
            fail(f"{rel(path)}: panel {title!r} has no gridPos")
        if not p.get("targets"):
            fail(f"{rel(path)}: panel {title!r} has no query")
        for t in p.get("targets") or []:
            expr = t.get("expr", "")
            names |= metric_names_in(expr)
            for var, val in GRAFANA_VARS.items():
                expr = expr.replace(var, val)
            expr = re.sub(r"\$\{?(\w+)\}?", ".*", expr)  # $node, ${proxy}: regex matchers
            rules.append({"record": f"dashboard:panel_{p['id']}_{t.get('refId', 'A')}", "expr": expr,
                          "labels": {"panel": title}})
    for t in (dash.get("templating") or {}).get("list", []):
        q = t.get("query")
        if isinstance(q, dict):
            q = q.get("query", "")
        if t.get("type") == "query":
            m = re.match(r"label_values\((\w+)", q or "")
            if m:
                names.add(m.group(1))
    check_metric_names(names, rel(path))
    promql_out.write_text(yaml.safe_dump({"groups": [{"name": "grafana-dashboard-queries", "rules": rules}]}, sort_keys=False))

    prov = ROOT / "deploy/grafana/provisioning"
    for f in sorted(prov.rglob("*.yml")) + sorted(prov.rglob("*.yaml")):
        try:
            yaml.safe_load(f.read_text())
        except yaml.YAMLError as e:
            fail(f"{rel(f)}: invalid YAML: {e}")


def check_compose(surface: dict) -> dict:
    path = ROOT / "deploy/compose.yaml"
    try:
        compose = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        fail(f"{rel(path)}: invalid YAML: {e}")
        return {}
    services = compose.get("services") or {}
    for needed in ("redis", "node1", "node2", "node3", "proxy1", "proxy2", "prometheus", "grafana"):
        if needed not in services:
            fail(f"{rel(path)}: no service {needed}")
    by_binary: dict[str, list[str]] = {b: [] for b in BINARIES}
    for name, svc in services.items():
        build = svc.get("build") or {}
        dockerfile = build.get("dockerfile") if isinstance(build, dict) else None
        if dockerfile:
            context = (path.parent / build.get("context", ".")).resolve()
            if not (context / dockerfile).exists():
                fail(f"{rel(path)}: service {name}: {dockerfile} not found from context {rel(context)}")
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                if not (path.parent / src).exists():
                    fail(f"{rel(path)}: service {name}: volume source {src} does not exist")
        binary = next((b for b in BINARIES if dockerfile and dockerfile.endswith(b.replace("sio-", "Dockerfile."))), None)
        if not binary:
            continue
        by_binary[binary].append(name)
        if svc.get("image") != f"sio-cluster/{binary}:0.1.0":
            fail(f"{rel(path)}: service {name}: image should be sio-cluster/{binary}:0.1.0")
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        s = surface.setdefault(binary, {"env_sets": [], "ports": {}, "probes": []})
        command = svc.get("command") or []
        command = command.split() if isinstance(command, str) else command
        s.setdefault("flags", []).extend({"source": f"{rel(path)} service {name}", "flag": a.split("=", 1)[0][2:]}
                                         for a in command if str(a).startswith("--"))
        s["env_sets"].append({"source": f"{rel(path)} service {name}", "env": env,
                              "names": {k: "compose" for k in env if k not in NON_FLAG_ENV}})
        grace_var = "SIO_SHUTDOWN_GRACE" if binary == "sio-node" else "SIO_PROXY_SHUTDOWN_GRACE"
        try:
            if parse_duration(str(svc.get("stop_grace_period", "10s"))) < parse_duration(env.get(grace_var, "30s")) + DRAIN_MARGIN_SECONDS:
                fail(f"{rel(path)}: service {name}: stop_grace_period must exceed {grace_var} + {DRAIN_MARGIN_SECONDS}s")
        except ValueError:
            fail(f"{rel(path)}: service {name}: unreadable stop_grace_period or {grace_var}")
    aliases = set()
    for name in by_binary["sio-node"]:
        nets = services[name].get("networks") or {}
        if isinstance(nets, dict):
            for n in nets.values():
                aliases |= set((n or {}).get("aliases") or [])
    for name in by_binary["sio-proxy"]:
        dns = str((services[name].get("environment") or {}).get("SIO_PROXY_BACKENDS_DNS", ""))
        for entry in filter(None, dns.split(",")):
            host = entry.rpartition(":")[0]
            if host not in aliases and host not in services:
                fail(f"{rel(path)}: service {name}: SIO_PROXY_BACKENDS_DNS host {host} is neither a service nor a node alias")
    return services


def check_prometheus_configs(compose_services: dict) -> None:
    compose_cfg = ROOT / "deploy/prometheus/prometheus.yml"
    local_cfg = ROOT / "deploy/prometheus/local.yml"
    for cfg in (compose_cfg, local_cfg):
        data = yaml.safe_load(cfg.read_text())
        jobs = {j["job_name"]: j for j in data.get("scrape_configs") or []}
        for job in BINARIES:
            if job not in jobs:
                fail(f"{rel(cfg)}: no scrape job {job} (the alerts and the dashboard select on job)")
        for rf in data.get("rule_files") or []:
            if not (cfg.parent / rf).exists():
                fail(f"{rel(cfg)}: rule file {rf} not found next to it")
        if cfg == local_cfg:
            interval = parse_duration(data.get("global", {}).get("scrape_interval", "1m"))
            if interval > 2:
                fail(f"{rel(cfg)}: scrape_interval {interval}s; tests need 1s-2s")
            for job in BINARIES:
                sd = (jobs.get(job) or {}).get("file_sd_configs") or []
                if not sd or any(f.startswith("/") for c in sd for f in c.get("files", [])):
                    fail(f"{rel(cfg)}: job {job} must use file_sd_configs with paths relative to the config file")
        else:
            ports = {"sio-node": 3000, "sio-proxy": 9091}
            for job, port in ports.items():
                for sc in (jobs.get(job) or {}).get("static_configs") or []:
                    for target in sc.get("targets") or []:
                        host, _, p = target.rpartition(":")
                        if host not in compose_services:
                            fail(f"{rel(cfg)}: job {job}: target {target} is not a compose service")
                        elif int(p) != port:
                            fail(f"{rel(cfg)}: job {job}: target {target} should use port {port}")


def check_dockerfiles() -> None:
    for binary, ports in (("sio-node", {"3000"}), ("sio-proxy", {"4000", "9091"})):
        path = ROOT / f"deploy/Dockerfile.{binary.removeprefix('sio-')}"
        if not path.exists():
            fail(f"{rel(path)} is missing")
            continue
        text = path.read_text()
        froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
        if not froms or not froms[0][0].startswith("rust:1.95-bookworm"):
            fail(f"{rel(path)}: the builder stage must be FROM rust:1.95-bookworm")
        if len(froms) < 2 or not re.match(r"(debian:bookworm-slim|gcr\.io/distroless/)", froms[-1][0]):
            fail(f"{rel(path)}: the runtime stage must be debian:bookworm-slim or distroless")
        if "cmake" not in text:
            fail(f"{rel(path)}: the builder must install cmake (zlib-ng via flate2 needs it)")
        if not re.search(rf"cargo build --release --locked -p {binary}\b", text):
            fail(f"{rel(path)}: expected `cargo build --release --locked -p {binary}`")
        runtime = text[text.rfind("\nFROM"):]
        if not re.search(r"^USER 10001(:10001)?\s*$", runtime, re.M):
            fail(f"{rel(path)}: the runtime stage must run as USER 10001 (numeric, for runAsNonRoot)")
        if f'ENTRYPOINT ["/usr/local/bin/{binary}"]' not in runtime:
            fail(f"{rel(path)}: ENTRYPOINT must be [\"/usr/local/bin/{binary}\"]")
        exposed = set(" ".join(re.findall(r"^EXPOSE\s+(.+)$", runtime, re.M)).split())
        if exposed != ports:
            fail(f"{rel(path)}: EXPOSE {sorted(exposed)}, expected {sorted(ports)}")
    ignore = ROOT / "deploy/dockerignore"
    lines = set(ignore.read_text().split()) if ignore.exists() else set()
    for needed in (".git", "**/target", "**/node_modules"):
        if needed not in lines:
            fail(f"{rel(ignore)}: should exclude {needed}")


def cmd_static(args: argparse.Namespace) -> int:
    surface = json.loads(Path(args.surface).read_text())
    services = check_compose(surface)
    check_prometheus_configs(services)
    check_grafana(Path(args.promql_out))
    check_dockerfiles()
    alerts = yaml.safe_load(ALERTS.read_text())
    names = {n for g in alerts["groups"] for r in g["rules"] for n in metric_names_in(r["expr"])}
    check_metric_names(names, rel(ALERTS))
    adapter = ROOT / "k8s/components/hpa-connections/prometheus-adapter-values.yaml"
    values = yaml.safe_load(adapter.read_text())
    names = {n for r in values["rules"]["custom"] for n in metric_names_in(r["seriesQuery"])}
    check_metric_names(names, rel(adapter))
    Path(args.surface).write_text(json.dumps(surface, indent=1))
    return finish()


# ---------------------------------------------------------------------------------------------
# Against the binaries
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def parse_help(text: str) -> dict:
    """Flags, env variables and defaults from clap's --help output."""
    flags: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^\s*(?:-\w,\s+)?--([a-z0-9][a-z0-9-]*)", line)
        if m:
            current = flags.setdefault(m.group(1), {})
        if current is None:
            continue
        if (e := re.search(r"\[env:\s*([A-Z0-9_]+)[=\]]", line)):
            current["env"] = e.group(1)
        if (d := re.search(r"\[default:\s*([^\]]+)\]", line)):
            current["default"] = d.group(1).strip()
    return flags


class Processes:
    """Every process started here, stopped on exit (by pid, never by name)."""

    def __init__(self):
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, label: str, argv: list[str], env: dict, log: Path) -> subprocess.Popen:
        p = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((label, p))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 10) -> int | None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                return None
        return p.returncode

    def close(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_http(url: str, proc: subprocess.Popen, seconds: float, want=(200,)) -> tuple[int | None, str]:
    deadline = time.monotonic() + seconds
    last: tuple[int | None, str] = (None, "")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, f"exited with status {proc.returncode}"
        try:
            last = http_get(url, timeout=1)
            if last[0] in want:
                return last
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = (None, str(e))
        time.sleep(0.1)
    return last


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join("        | " + line for line in text)


def base_env() -> dict:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    env["RUST_LOG"] = os.environ.get("SIO_CHECK_RUST_LOG", "warn")
    return env


# Secrets whose value the binary parses: a stand-in it accepts (the others get check-<name>).
SECRET_STANDINS = {
    # any valid bcrypt hash (cost 4)
    "SIO_ADMIN_PASSWORD_HASH": "$2a$04$k7SNVGMqI1/5.eGNCqVuweGF9evMRqHd9OTbSK6MoS8Iz4qeyIlLe",
}


def cmd_binaries(args: argparse.Namespace) -> int:
    surface = json.loads(Path(args.surface).read_text())
    work = Path(args.work)
    procs = Processes()
    bins = {"sio-node": Path(args.node_bin), "sio-proxy": Path(args.proxy_bin)}
    strict_metrics = os.environ.get("SIO_CHECK_METRICS_STRICT") == "1"
    try:
        helps: dict[str, dict] = {}
        for binary, path in bins.items():
            if not (path.is_file() and os.access(path, os.X_OK)):
                if binary == "sio-proxy":
                    warn("=" * 78)
                    warn(f"SKIPPED every sio-proxy binary check: {path} does not exist.")
                    warn("Build it (cargo build -p sio-proxy) or set SIO_PROXY_BIN; until then the")
                    warn("proxy's env vars, ports and probe paths in k8s/ and deploy/ are UNVERIFIED.")
                    warn("=" * 78)
                else:
                    fail(f"{path} does not exist", "cargo build -p sio-node, or set SIO_NODE_BIN to the binary")
                continue
            out = subprocess.run([str(path), "--help"], env=base_env(), capture_output=True, text=True, timeout=30)
            if out.returncode != 0:
                fail(f"{path} --help exited with {out.returncode}: {out.stderr.strip()[:300]}")
                continue
            helps[binary] = parse_help(out.stdout)
            note(f"{path} --help: {len(helps[binary])} flags, {sum('env' in f for f in helps[binary].values())} with env vars")
            by_env = {f["env"]: flag for flag, f in helps[binary].items() if "env" in f}
            for es in surface.get(binary, {}).get("env_sets", []):
                for name in es["names"]:
                    if name not in by_env:
                        close = difflib.get_close_matches(name, by_env, n=1)
                        fail(f"{es['source']}: {name} is not a variable of {binary} (`{binary} --help` lists no [env: {name}])",
                             f"did you mean {close[0]}?" if close else f"use one of: {', '.join(sorted(by_env))}")
            for f in surface.get(binary, {}).get("flags", []):
                if f["flag"] not in helps[binary]:
                    close = difflib.get_close_matches(f["flag"], helps[binary], n=1)
                    fail(f"{f['source']}: --{f['flag']} is not a flag of {binary}",
                         f"did you mean --{close[0]}?" if close else f"see `{binary} --help`")
            # Container ports are the binaries' default ports.
            listen_flags = {"sio-node": {"listen": "http"}, "sio-proxy": {"listen": "http", "metrics-listen": "metrics"}}[binary]
            ports = surface.get(binary, {}).get("ports", {})
            for flag, port_name in listen_flags.items():
                default = helps[binary].get(flag, {}).get("default")
                if default is None:
                    fail(f"`{binary} --help` shows no --{flag} with a default")
                elif port_name in ports and port_of(default) != ports[port_name]:
                    fail(f"container port {port_name}={ports[port_name]} of {binary}, but --{flag} defaults to {default}",
                         "align the manifests' containerPort (and Service/probes) with the binary's default")

        redis_url = None
        if shutil.which("redis-server"):
            rport = free_port()
            rp = procs.start("redis", ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(work)], base_env(), work / "redis.log")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and rp.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", rport), timeout=0.5).close()
                    redis_url = f"redis://127.0.0.1:{rport}"
                    break
                except OSError:
                    time.sleep(0.05)
        else:
            warn("redis-server not found: nodes run standalone here, so /readyz is only checked for existing (not for 200)")

        live_node = None  # (address, process) of one node kept running for the proxy and Prometheus
        live_proxy = None  # metrics address of one proxy kept running for Prometheus
        live_metrics: dict[str, str] = {}
        if "sio-node" in helps:
            seen = set()
            for es in surface.get("sio-node", {}).get("env_sets", []):
                port = free_port()
                env = dict(es["env"])
                env["SIO_LISTEN"] = f"127.0.0.1:{port}"
                env["SIO_ADVERTISE_ADDR"] = f"127.0.0.1:{port}"
                for k, val in list(env.items()):
                    if val == "<secret>":
                        # long enough for every check (HS256 needs 32 bytes)
                        env[k] = SECRET_STANDINS.get(
                            k, f"check-{k.lower().replace('_', '-')}-0123456789abcdef0123456789abcdef")
                if "SIO_ADMIN_UI_DIR" in env:
                    # the image's path: stand in a directory holding the UI's index.html
                    ui = work / "admin-ui"
                    ui.mkdir(exist_ok=True)
                    (ui / "index.html").write_text("<html><head></head></html>")
                    env["SIO_ADMIN_UI_DIR"] = str(ui)
                if redis_url and "SIO_REDIS_URL" in env:
                    env["SIO_REDIS_URL"] = redis_url
                    env["SIO_REDIS_PREFIX"] = f"check{port}"
                else:
                    env.pop("SIO_REDIS_URL", None)
                key = json.dumps({k: v for k, v in env.items() if k not in ("SIO_LISTEN", "SIO_ADVERTISE_ADDR", "SIO_REDIS_PREFIX")}, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
                log = work / f"node-{port}.log"
                p = procs.start("sio-node", [str(bins["sio-node"])], {**base_env(), **env}, log)
                base = f"http://127.0.0.1:{port}"
                status, body = wait_http(base + "/healthz", p, 20)
                if status != 200:
                    fail(f"{es['source']}: sio-node started with this environment did not answer /healthz 200 within 20s ({status}: {body[:200]})\n{tail(log)}",
                         "a value in the ConfigMap/env is probably rejected by the binary: see its log above")
                    procs.stop(p)
                    continue
                note(f"sio-node as in {es['source']}: /healthz 200 ({'with Redis ' + redis_url if 'SIO_REDIS_URL' in env else 'standalone'})")
                if "SIO_REDIS_URL" in env:
                    status, body = wait_http(base + "/readyz", p, 20)
                    if status != 200:
                        fail(f"{es['source']}: sio-node with Redis never became ready (/readyz {status}: {body[:200]})\n{tail(log)}")
                    else:
                        note("  /readyz 200")
                for probe in surface["sio-node"]["probes"] if live_node is None else []:
                    status, _ = http_get(base + probe["path"])
                    note(f"  {probe['kind']} GET {probe['path']} -> {status}")
                    if status == 404:
                        fail(f"sio-node {probe['kind']} path {probe['path']} answers 404: no such route",
                             "use /healthz (liveness, startup) or /readyz (readiness)")
                    elif probe["kind"] in ("livenessProbe", "startupProbe") and status != 200:
                        fail(f"sio-node {probe['kind']} path {probe['path']} answers {status} on a healthy node; liveness must be 200")
                status, body = http_get(base + "/metrics")
                if status != 200 or "# TYPE" not in body:
                    fail(f"sio-node /metrics answers {status} without Prometheus text (the pod annotations and ServiceMonitor scrape it)")
                else:
                    live_metrics["sio-node"] = body
                if http_get(base + "/no-such-route-sio-check")[0] != 404:
                    warn("sio-node answers an unknown path with something other than 404, so the probe-path check proves little")
                if live_node is None:
                    live_node = (f"127.0.0.1:{port}", p)
                else:
                    code = procs.stop(p, timeout=40)
                    if code is None:
                        fail(f"{es['source']}: sio-node did not exit within 40s of SIGTERM with no client connected\n{tail(log)}")
                    else:
                        note(f"  SIGTERM -> exit status {code}")

        if "sio-proxy" in helps and live_node:
            seen = set()
            for es in surface.get("sio-proxy", {}).get("env_sets", []):
                lport, mport = free_port(), free_port()
                env = dict(es["env"])
                env["SIO_PROXY_LISTEN"] = f"127.0.0.1:{lport}"
                env["SIO_PROXY_METRICS_LISTEN"] = f"127.0.0.1:{mport}"
                node_port = live_node[0].rpartition(":")[2]
                if "SIO_PROXY_BACKENDS_DNS" in env:
                    env["SIO_PROXY_BACKENDS_DNS"] = f"localhost:{node_port}"
                if "SIO_PROXY_BACKENDS" in env:
                    env["SIO_PROXY_BACKENDS"] = live_node[0]
                if "SIO_PROXY_BACKENDS_REDIS" in env:
                    if redis_url:
                        env["SIO_PROXY_BACKENDS_REDIS"] = redis_url
                    else:
                        env.pop("SIO_PROXY_BACKENDS_REDIS")
                for k, val in list(env.items()):
                    if val == "<secret>":
                        # long enough for every check (HS256 needs 32 bytes)
                        env[k] = f"check-{k.lower().replace('_', '-')}-0123456789abcdef0123456789abcdef"
                key = json.dumps({k: v for k, v in env.items() if k not in ("SIO_PROXY_LISTEN", "SIO_PROXY_METRICS_LISTEN")}, sort_keys=True)
                if key in seen:
                    continue
                seen.add(key)
                log = work / f"proxy-{lport}.log"
                p = procs.start("sio-proxy", [str(bins["sio-proxy"])], {**base_env(), **env}, log)
                listeners = {"http": f"http://127.0.0.1:{lport}", "metrics": f"http://127.0.0.1:{mport}"}
                status, body = wait_http(listeners["metrics"] + "/metrics", p, 20)
                if status != 200:
                    fail(f"{es['source']}: sio-proxy started with this environment did not serve /metrics within 20s ({status}: {body[:200]})\n{tail(log)}",
                         "a value in the ConfigMap/env is probably rejected by the binary: see its log above")
                    procs.stop(p)
                    continue
                live_metrics["sio-proxy"] = body
                for probe in surface["sio-proxy"]["probes"] if live_proxy is None else []:
                    base = listeners.get(probe["port_name"] or "", None)
                    if base is None:
                        fail(f"sio-proxy {probe['kind']} uses port {probe['port']}, which is neither the listener nor the metrics port")
                        continue
                    status, body = wait_http(base + probe["path"], p, 5)
                    note(f"  {probe['kind']} GET {probe['path']} on {probe['port_name']} -> {status}")
                    if status != 200:
                        fail(f"sio-proxy {probe['kind']}: GET {probe['path']} on the {probe['port_name']} listener answers {status} ({body[:120]!r}); the probe would fail",
                             "point the probe at a route the proxy answers itself")
                # Discovery as configured (the DNS name replaced by localhost) finds the node healthy.
                deadline = time.monotonic() + 20
                healthy = False
                while time.monotonic() < deadline and not healthy:
                    _, text = http_get(listeners["metrics"] + "/metrics")
                    healthy = bool(re.search(r"^sio_proxy_backend_healthy\{[^}]*\} 1(\.0)?$", text, re.M))
                    live_metrics["sio-proxy"] = text
                    time.sleep(0.2)
                if not healthy:
                    fail(f"{es['source']}: with this environment the proxy never reported a healthy backend (sio_proxy_backend_healthy 1) for a ready node within 20s\n{tail(log)}")
                else:
                    note(f"sio-proxy as in {es['source']}: discovered the node through DNS (localhost) and reports it healthy")
                if live_proxy is None:
                    live_proxy = f"127.0.0.1:{mport}"
                    continue
                code = procs.stop(p, timeout=40)
                if code is None:
                    fail(f"{es['source']}: sio-proxy did not exit within 40s of SIGTERM\n{tail(log)}")
                else:
                    note(f"  SIGTERM -> exit status {code}")

        # Metric names: the list the dashboards and alerts are checked against, versus reality.
        known = known_metrics()
        for binary, text in live_metrics.items():
            exported = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
            names = {n for n, _ in exported}
            missing = sorted(n for n, (_, b) in known.items() if b in (binary, "both") and n not in names)
            if missing:
                msg = f"{binary} /metrics does not (yet) export {len(missing)} listed metric(s): {', '.join(missing)}"
                (fail if strict_metrics else warn)(msg + ("" if strict_metrics else " (vector metrics appear after their first use; SIO_CHECK_METRICS_STRICT=1 makes this an error)"))
            for n, t in exported:
                if n in known and known[n][0] != t:
                    fail(f"{binary} exports {n} as a {t}, {rel(KNOWN_METRICS)} says {known[n][0]}")
            if args.promtool:
                out = subprocess.run([args.promtool, "check", "metrics"], input=text, capture_output=True, text=True)
                if out.returncode != 0:
                    msg = f"`promtool check metrics` on {binary}'s /metrics: {(out.stdout + out.stderr).strip()}"
                    (fail if strict_metrics else warn)(msg)

        if args.prometheus and live_node:
            check_local_prometheus(args.prometheus, work, live_node[0], procs, live_proxy)
    finally:
        procs.close()
    return finish()


def check_local_prometheus(prometheus: str, work: Path, node_addr: str, procs: Processes, proxy_metrics: str | None) -> None:
    """A real Prometheus runs deploy/prometheus/local.yml (copied with alerts.yml into a scratch
    directory, as a test would) and must scrape the node through file_sd."""
    d = work / "prometheus"
    (d / "targets").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "deploy/prometheus/local.yml", d / "local.yml")
    shutil.copy(ALERTS, d / "alerts.yml")
    (d / "targets/sio-node.json").write_text(json.dumps([{"targets": [node_addr]}]))
    jobs = {"sio-node": node_addr}
    if proxy_metrics:
        (d / "targets/sio-proxy.json").write_text(json.dumps([{"targets": [proxy_metrics]}]))
        jobs["sio-proxy"] = proxy_metrics
    port = free_port()
    log = work / "prometheus.log"
    p = procs.start("prometheus", [prometheus, f"--config.file={d / 'local.yml'}", f"--storage.tsdb.path={d / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{port}"], base_env(), log)
    api = f"http://127.0.0.1:{port}/api/v1"
    deadline = time.monotonic() + 30
    result = None
    while time.monotonic() < deadline:
        if p.poll() is not None:
            break
        try:
            _, body = http_get(api + "/query?query=" + urllib.request.quote("up == 1"), timeout=1)
            data = json.loads(body).get("data", {}).get("result", [])
            if {r["metric"].get("job") for r in data} >= set(jobs):
                result = data
                break
        except (OSError, ValueError, urllib.error.URLError):
            pass
        time.sleep(0.25)
    if result:
        note(f"Prometheus with local.yml scraped {jobs}: up=1")
    if not result:
        fail(f"a real Prometheus running deploy/prometheus/local.yml did not scrape {jobs} through targets/*.json within 30s\n{tail(log)}")
    else:
        _, body = http_get(api + "/rules")
        groups = json.loads(body).get("data", {}).get("groups", [])
        bad = [r["name"] for g in groups for r in g["rules"] if r.get("health") not in ("ok", "unknown")]
        if not groups or bad:
            fail(f"Prometheus loaded alerts.yml with {len(groups)} group(s); unhealthy rules: {bad}")
        else:
            note(f"Prometheus loaded {sum(len(g['rules']) for g in groups)} alert rules in {len(groups)} groups")
    procs.stop(p)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prometheusrule")
    p.add_argument("--write", action="store_true")
    p = sub.add_parser("manifests")
    p.add_argument("--variant", nargs=3, action="append", metavar=("NAME", "SOURCE_DIR", "RENDERED"), required=True)
    p.add_argument("--crds-out", required=True)
    p.add_argument("--surface-out", required=True)
    p = sub.add_parser("static")
    p.add_argument("--surface", required=True)
    p.add_argument("--promql-out", required=True)
    p = sub.add_parser("binaries")
    p.add_argument("--surface", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--node-bin", required=True)
    p.add_argument("--proxy-bin", required=True)
    p.add_argument("--promtool")
    p.add_argument("--prometheus")
    args = ap.parse_args()
    return {"prometheusrule": cmd_prometheusrule, "manifests": cmd_manifests,
            "static": cmd_static, "binaries": cmd_binaries}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
