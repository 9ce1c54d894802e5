#!/usr/bin/env python3
"""Starts the cluster of a kustomize overlay from the built images, with the manifests' own
settings, and checks it the way Kubernetes and a client would (`make images-test`).

  deploy/images/test.py [--overlay k8s/overlays/dev] [--nodes 3] [--proxies 1] [--keep]

What is taken from the rendered manifests (`kubectl kustomize OVERLAY`), per container:
image, command and args (else the image's entrypoint and cmd), env and envFrom with ConfigMap
and Secret values resolved (fieldRef, resourceFieldRef, $(VAR) expansion as the kubelet does
it), ports, volumes (emptyDir, configMap, secret), the pod and container security context, the
startup/readiness/liveness probes and the prometheus.io scrape annotations.

How a pod network is mapped onto one machine without network namespaces (buildah run
--isolation chroot --network host):
  * every pod gets its own loopback address, 127.0.0.<10+n>, as its pod IP (status.podIP);
  * every containerPort gets a free port, the same for every replica of a workload (as every
    pod of a Deployment uses the same port); `HOST:PORT` in env values, command and args is
    rewritten where HOST is the pod itself (0.0.0.0, which becomes the pod IP so nothing
    listens on every interface, the pod IP, localhost) and PORT one of its containerPorts;
  * every Service name (NAME, NAME.NS, NAME.NS.svc, NAME.NS.svc.cluster.local) resolves inside
    the containers (their /etc/hosts, buildah --add-host) to the pod IPs its selector picks, as
    a headless Service's DNS does; for a ClusterIP Service `NAME:PORT` is rewritten to the
    target port (what the Service's virtual IP would forward to), for a headless one PORT must
    be a containerPort of the pods (no virtual IP translates it) and gets that port's mapping;
  * a container whose image is not built here (the overlay's redis:7) runs as the host's
    redis-server with the container's args.
Clients connect to the proxy pod's address (what the LoadBalancer Service forwards to), from
their own loopback addresses (127.0.1.N), so the proxy's ip-hash spreads them.

Fails when: an image is missing or runs as root or under a name instead of a number (the
kubelet cannot verify runAsNonRoot then), the image user differs from the manifest's
runAsUser, a process exits before it is ready (a flag or variable the binary refuses, a
library the image lacks), a probe does not answer 200-399 in the time the kubelet allows, the
official client's scenario fails (tests/js/images.mjs: connect, join, room message across
nodes, notification, the admin UI page), /metrics of a container does not answer or lacks the
expected series, a container writes outside its declared volumes although the manifest sets
readOnlyRootFilesystem (checked on the container's overlay upper directory), or a process
does not stop within terminationGracePeriodSeconds after SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
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
PREFIX = "sio-imgtest-"
T0 = time.monotonic()
problems: list[str] = []


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def fail(msg: str) -> None:
    problems.append(msg)
    print(f"FAIL: {msg}", flush=True)


class Abort(Exception):
    pass


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


# --- the rendered manifests -----------------------------------------------------------------


def render(overlay: Path) -> list[dict]:
    out = run(["kubectl", "kustomize", str(overlay)]).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def quantity(text: str, divisor: str = "1") -> str:
    """A resourceFieldRef value as the kubelet gives it: the quantity divided by the divisor,
    rounded up."""
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}

    def value(q: str) -> float:
        m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
        if not m or m.group(2) not in units:
            raise Abort(f"cannot read the quantity {q!r}")
        return float(m.group(1)) * units[m.group(2)]

    v = value(text) / value(divisor)
    return str(int(v) if v == int(v) else int(v) + 1)


def expand(text: str, env: dict[str, str]) -> str:
    """$(VAR) references as the kubelet expands them: defined ones replaced, $$ escapes,
    undefined ones left as they are."""
    def sub(m: re.Match) -> str:
        if m.group(0).startswith("$$"):
            return m.group(0)[1:]
        return env.get(m.group(1), m.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", lambda m: "$" if m.group(0) == "$$" else sub(m), text)


class Cluster:
    def __init__(self, docs: list[dict]):
        self.docs = docs
        self.by_kind: dict[tuple[str, str], dict] = {}
        for d in docs:
            self.by_kind[(d["kind"], d["metadata"]["name"])] = d
        self.namespace = next((d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"), "default")

    def config(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        obj = self.by_kind.get((kind, name))
        if obj is None:
            if optional:
                return None
            raise Abort(f"{kind} {name} is referenced but not in the rendered overlay")
        data = dict(obj.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(obj.get("stringData") or {})
        return {k: str(v) for k, v in data.items()}

    def workloads(self) -> list[dict]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet")]

    def services(self) -> list[dict]:
        return [d for d in self.docs if d["kind"] == "Service"]


# --- pods -------------------------------------------------------------------------------------


def free_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts`."""
    for _ in range(200):
        s = socket.socket()
        s.bind((hosts[0], 0))
        port = s.getsockname()[1]
        ok = True
        others = []
        for h in hosts[1:]:
            o = socket.socket()
            try:
                o.bind((h, port))
                others.append(o)
            except OSError:
                ok = False
                o.close()
                break
        for o in others:
            o.close()
        s.close()
        if ok:
            return port
    raise Abort("no free port")


class Pod:
    def __init__(self, workload: dict, index: int, ip: str):
        self.workload = workload
        self.kind = workload["kind"]
        self.wname = workload["metadata"]["name"]
        if self.kind == "StatefulSet":
            self.name = f"{self.wname}-{index}"
        else:
            self.name = f"{self.wname}-6f9c8d7b5{index}-x{index}k9p"
        self.ip = ip
        self.spec = workload["spec"]["template"]["spec"]
        self.labels = workload["spec"]["template"]["metadata"].get("labels", {})
        self.annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        self.procs: list[Container] = []


class Container:
    def __init__(self, pod: Pod, spec: dict, ports: dict[int, int]):
        self.pod = pod
        self.spec = spec
        self.name = f"{pod.name}/{spec['name']}"
        self.ports = ports  # containerPort -> host port
        self.named = {p["name"]: p["containerPort"] for p in spec.get("ports", []) if "name" in p}
        self.proc: subprocess.Popen | None = None
        self.ctr: str | None = None
        self.log_path: Path | None = None
        self.upper: Path | None = None
        self.before: set[str] = set()
        self.volumes: set[str] = set()
        self.host = False  # runs on the host (image not built here)
        self.pid: int | None = None
        self.expected_uid = (0, 0)
        self.argv: list[str] = []

    def port(self, ref) -> int:
        cport = self.named[ref] if isinstance(ref, str) else int(ref)
        if cport not in self.ports:
            raise Abort(f"{self.name}: probe or annotation port {ref} is not a containerPort")
        return self.ports[cport]

    def log_tail(self, n: int = 25) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        return "\n".join("      | " + line for line in lines)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def image_config(ref: str) -> dict | None:
    r = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)["OCIv1"]["config"]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def main_process(c: Container) -> int | None:
    """The container's process: `buildah run` -> buildah-chroot-runtime -> buildah-chroot-exec
    -> the process (whatever it exec'd into since)."""
    for pid in descendants(c.proc.pid):
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if argv0 and not os.path.basename(argv0).startswith(b"buildah"):
                return pid
        except OSError:
            pass
    return None


def uid_of(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    gid = int(re.search(r"^Gid:\s+(\d+)", status, re.M).group(1))
    return uid, gid


def upper_files(upper: Path, skip: set[str]) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(upper):
        rel = "/" + os.path.relpath(dirpath, upper).lstrip(".")
        rel = rel.rstrip("/") or "/"
        dirnames[:] = [d for d in dirnames if f"{rel.rstrip('/')}/{d}" not in skip]
        for f in filenames + dirnames:
            found.add(f"{rel.rstrip('/')}/{f}")
    return found


# --- probes -----------------------------------------------------------------------------------


def probe_once(c: Container, probe: dict) -> tuple[bool, str]:
    timeout = probe.get("timeoutSeconds", 1)
    if "httpGet" in probe:
        g = probe["httpGet"]
        host = g.get("host") or c.pod.ip
        url = f"{g.get('scheme', 'HTTP').lower()}://{host}:{c.port(g['port'])}{g.get('path', '/')}"
        req = urllib.request.Request(url, headers={h["name"]: h["value"] for h in g.get("httpHeaders", [])})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return 200 <= r.status < 400, f"GET {g.get('path')} -> {r.status}"
        except urllib.error.HTTPError as e:
            return 200 <= e.code < 400, f"GET {g.get('path')} -> {e.code} {e.read()[:200]!r}"
        except OSError as e:
            return False, f"GET {g.get('path')} -> {e}"
    if "tcpSocket" in probe:
        port = c.port(probe["tcpSocket"]["port"])
        try:
            socket.create_connection((c.pod.ip, port), timeout=timeout).close()
            return True, f"tcp {port} open"
        except OSError as e:
            return False, f"tcp {port}: {e}"
    if "exec" in probe:
        cmd = probe["exec"]["command"]
        if c.host and cmd[:1] == ["redis-cli"]:
            cmd = ["redis-cli", "-h", c.pod.ip, "-p", str(c.port(6379))] + cmd[1:]
        elif not c.host:
            cmd = ["buildah", "run", "--isolation", "chroot", "--network", "host", c.ctr, "--"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10)
        return r.returncode == 0, f"exec {' '.join(probe['exec']['command'])} -> {r.returncode} {r.stdout.strip()[:80]}"
    raise Abort(f"{c.name}: probe without httpGet, tcpSocket or exec")


def wait_probe(c: Container, kind: str, bound: float | None = None) -> bool:
    """Polls the probe every periodSeconds as the kubelet does. A startup probe fails after
    failureThreshold failures in a row; a readiness probe has no such end in Kubernetes (the
    pod just stays unready), here it fails after `bound` seconds."""
    probe = c.spec.get(kind)
    if not probe:
        return True
    period = probe.get("periodSeconds", 10)
    threshold = probe.get("failureThreshold", 3)
    time.sleep(probe.get("initialDelaySeconds", 0))
    failures = 0
    start = time.monotonic()
    while True:
        if not c.alive():
            fail(f"{c.name}: exited with {c.proc.returncode} before its {kind} succeeded\n{c.log_tail()}")
            return False
        ok, what = probe_once(c, probe)
        if ok:
            log(f"{c.name}: {kind} ok ({what}) after {time.monotonic() - start:.1f}s")
            return True
        failures += 1
        if (bound is None and failures >= threshold) or (bound is not None and time.monotonic() - start > bound):
            fail(f"{c.name}: {kind} never succeeded ({failures} tries, last: {what})\n{c.log_tail()}")
            return False
        time.sleep(period)


# --- the test ---------------------------------------------------------------------------------


class Harness:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="sio-images-test."))
        self.cluster = Cluster(render(ROOT / args.overlay))
        self.pods: list[Pod] = []
        self.containers: list[Container] = []
        self.mapping: list[str] = []

    # -- plan

    def plan(self) -> None:
        counts = {"sio-node": self.args.nodes, "sio-proxy": self.args.proxies}
        n = 0
        for w in self.cluster.workloads():
            name = w["metadata"]["name"]
            replicas = min(w["spec"].get("replicas", 1), counts.get(name, 1))
            ips = [f"127.0.0.{10 + n + i}" for i in range(replicas)]
            n += replicas
            pods = [Pod(w, i, ips[i]) for i in range(replicas)]
            ports = {}
            for cspec in w["spec"]["template"]["spec"]["containers"]:
                for p in cspec.get("ports", []):
                    ports[p["containerPort"]] = free_port(ips)
            for cport, hport in ports.items():
                self.mapping.append(f"{name} containerPort {cport} -> {','.join(ips)}:{hport}")
            for pod in pods:
                for cspec in pod.spec["containers"]:
                    c = Container(pod, cspec, ports)
                    pod.procs.append(c)
                    self.containers.append(c)
            self.pods.extend(pods)

    def service_hosts(self) -> dict[str, list[str]]:
        """Service DNS names -> the pod IPs their selectors pick."""
        hosts = {}
        ns = self.cluster.namespace
        for s in self.cluster.services():
            sel = s["spec"].get("selector") or {}
            ips = [p.ip for p in self.pods if sel and all(p.labels.get(k) == v for k, v in sel.items())]
            if not ips:
                continue
            name = s["metadata"]["name"]
            for alias in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
                hosts[alias] = ips
        return hosts

    def service_port(self, host: str, port: int) -> int | None:
        """The host port `HOST:PORT` of a Service name reaches, None if HOST is no Service."""
        ns = self.cluster.namespace
        for s in self.cluster.services():
            name = s["metadata"]["name"]
            if host not in (name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
                continue
            sel = s["spec"].get("selector") or {}
            pods = [p for p in self.pods if sel and all(p.labels.get(k) == v for k, v in sel.items())]
            if not pods:
                raise Abort(f"Service {name} selects no pod of the overlay")
            c = pods[0].procs[0]
            headless = s["spec"].get("clusterIP") == "None"
            if headless:
                if port not in c.ports:
                    raise Abort(f"{host}:{port}: headless Service {name} has no virtual IP to translate "
                                f"port {port}, and its pods do not listen there (containerPorts {sorted(c.ports)})")
                return c.ports[port]
            sp = next((p for p in s["spec"]["ports"] if p["port"] == port), None)
            if sp is None:
                raise Abort(f"{host}:{port}: Service {name} has no port {port}")
            target = sp.get("targetPort", port)
            return c.port(target)
        return None

    def rewrite(self, c: Container, text: str) -> str:
        def sub(m: re.Match) -> str:
            host, port = m.group(1), int(m.group(2))
            if host in ("0.0.0.0", "127.0.0.1", "localhost", c.pod.ip) and port in c.ports:
                return f"{c.pod.ip if host == '0.0.0.0' else host}:{c.ports[port]}"
            mapped = self.service_port(host, port)
            return f"{host}:{mapped}" if mapped is not None else m.group(0)

        return re.sub(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})\b", sub, text)

    def environment(self, c: Container, secret: set[str] | None = None) -> dict[str, str]:
        """The container's environment; the names of the variables read from a Secret are
        added to `secret`."""
        secret = set() if secret is None else secret
        env: dict[str, str] = {}
        for src in c.spec.get("envFrom", []):
            ref = src.get("configMapRef") or src.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in src else "Secret"
            data = self.cluster.config(kind, ref["name"], ref.get("optional", False)) or {}
            for k, v in data.items():
                env[src.get("prefix", "") + k] = v
                if kind == "Secret":
                    secret.add(src.get("prefix", "") + k)
        pod = c.pod
        fields = {"metadata.name": pod.name, "metadata.namespace": self.cluster.namespace,
                  "status.podIP": pod.ip, "status.podIPs": pod.ip, "status.hostIP": "127.0.0.1",
                  "spec.nodeName": "images-test", "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
                  "metadata.uid": "00000000-0000-4000-8000-000000000000"}
        for e in c.spec.get("env", []):
            if "value" in e or "valueFrom" not in e:
                env[e["name"]] = expand(str(e.get("value", "")), env)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                path = vf["fieldRef"]["fieldPath"]
                m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
                if m:
                    env[e["name"]] = (pod.labels if m.group(1) == "labels" else pod.annotations).get(m.group(2), "")
                elif path in fields:
                    env[e["name"]] = fields[path]
                else:
                    raise Abort(f"{c.name}: env {e['name']}: fieldRef {path} is not supported here")
            elif "resourceFieldRef" in vf:
                r = vf["resourceFieldRef"]
                kind, _, res = r["resource"].partition(".")
                q = (c.spec.get("resources", {}).get(kind, {}) or {}).get(res)
                if q is None:
                    raise Abort(f"{c.name}: env {e['name']}: no {r['resource']} set")
                env[e["name"]] = quantity(q, str(r.get("divisor", "1")))
            else:
                ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
                kind = "ConfigMap" if "configMapKeyRef" in vf else "Secret"
                data = self.cluster.config(kind, ref["name"], ref.get("optional", False))
                if data is None or ref["key"] not in data:
                    if ref.get("optional", False):
                        continue
                    raise Abort(f"{c.name}: env {e['name']}: key {ref['key']} not in {kind} {ref['name']}")
                env[e["name"]] = data[ref["key"]]
                if kind == "Secret":
                    secret.add(e["name"])
        return {k: self.rewrite(c, v) for k, v in env.items()}

    # -- start

    def start_all(self) -> None:
        hosts = self.service_hosts()
        for alias, ips in sorted(hosts.items()):
            if "." not in alias:
                self.mapping.append(f"Service {alias} (and .{self.cluster.namespace}[.svc[.cluster.local]]) -> {', '.join(ips)}")
        for line in self.mapping:
            log(f"map: {line}")
        # StatefulSets (the overlay's Redis) first and ready, then the Deployments: sio-node
        # exits when Redis cannot be reached at start-up (in Kubernetes it would be restarted
        # until Redis is up).
        first = [c for c in self.containers if c.pod.kind == "StatefulSet"]
        for c in first:
            self.start(c, hosts)
        for c in first:
            self.check_running(c)
            if wait_probe(c, "startupProbe"):
                wait_probe(c, "readinessProbe", bound=60)
        for c in self.containers:
            if c not in first:
                self.start(c, hosts)

    def start(self, c: Container, hosts: dict[str, list[str]]) -> None:
        spec, pod = c.spec, c.pod
        image = spec["image"]
        secret: set[str] = set()
        env = self.environment(c, secret)
        c.log_path = self.work / (c.name.replace("/", "_") + ".log")
        psc = pod.spec.get("securityContext", {}) or {}
        csc = spec.get("securityContext", {}) or {}
        sc = {**psc, **csc}
        cfg = image_config(image)
        if cfg is None:
            if image.startswith("redis:") and shutil.which("redis-server"):
                return self.start_redis(c, env)
            raise Abort(f"{c.name}: image {image} is not built here (run `make images`)")

        # the user: the image's, overridden by runAsUser/runAsGroup as the kubelet does
        image_user = cfg.get("User", "") or "0"
        uid_s, _, gid_s = image_user.partition(":")
        if not uid_s.isdigit():
            fail(f"{image}: USER {image_user!r} is not numeric: the kubelet cannot verify runAsNonRoot")
            uid_s = "0"
        if int(uid_s) == 0:
            fail(f"{image}: runs as root (USER {image_user!r})")
        uid = int(sc.get("runAsUser", uid_s))
        gid = int(sc.get("runAsGroup", gid_s if gid_s.isdigit() else 0))
        if "runAsUser" in sc and int(uid_s) != uid:
            fail(f"{image}: USER {image_user} but the manifest runs it as {uid}")
        if sc.get("runAsNonRoot") and uid == 0:
            fail(f"{c.name}: runAsNonRoot but the user is root: the kubelet would refuse to start it")

        entry = cfg.get("Entrypoint") or []
        cmd = cfg.get("Cmd") or []
        argv = [expand(a, env) for a in spec["command"]] if "command" in spec else list(entry)
        if "args" in spec:
            argv += [expand(a, env) for a in spec["args"]]
        elif "command" not in spec:
            argv += cmd
        argv = [self.rewrite(c, a) for a in argv]
        if not argv:
            raise Abort(f"{c.name}: nothing to run")

        # volumes: emptyDir -> a fresh directory (0777, as the kubelet makes it), configMap/secret -> files
        vols = {v["name"]: v for v in pod.spec.get("volumes", [])}
        mounts = []
        for vm in spec.get("volumeMounts", []):
            v = vols.get(vm["name"])
            if v is None:
                raise Abort(f"{c.name}: volumeMount {vm['name']} names no volume")
            d = self.work / "volumes" / c.name.replace("/", "_") / vm["name"]
            d.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in v:
                os.chmod(d, 0o777)
            elif "configMap" in v or "secret" in v:
                ref = v.get("configMap") or v.get("secret")
                data = self.cluster.config("ConfigMap" if "configMap" in v else "Secret",
                                           ref.get("name") or ref.get("secretName"), ref.get("optional", False)) or {}
                for k, val in data.items():
                    (d / k).write_text(val)
                    os.chmod(d / k, 0o644)
            else:
                raise Abort(f"{c.name}: volume {vm['name']}: only emptyDir, configMap and secret are supported here")
            mounts.append(f"{d}:{vm['mountPath']}" + (":ro" if vm.get("readOnly") else ""))
            c.volumes.add(vm["mountPath"].rstrip("/"))

        c.ctr = PREFIX + pod.name + "-" + spec["name"]
        subprocess.run(["buildah", "rm", c.ctr], capture_output=True)
        add_hosts = [a for alias, ips in hosts.items() for ip in ips for a in ("--add-host", f"{alias}:{ip}")]
        run(["buildah", "from", "--pull-never", "--name", c.ctr, *add_hosts, image])
        # buildah's own files (the mount points of /etc/hosts, /run, ...) appear in the upper
        # directory with the first run; record them before the real process starts.
        subprocess.run(["buildah", "run", "--isolation", "chroot", "--network", "host", "--user", f"{uid}:{gid}",
                        *sum((["-v", m] for m in mounts), []), c.ctr, "--", argv[0], "--version"],
                       capture_output=True)
        mnt = Path(run(["buildah", "mount", c.ctr]).stdout.strip())
        c.upper = mnt.parent / "diff"
        c.before = upper_files(c.upper, c.volumes)
        cmdline = ["buildah", "run", "--isolation", "chroot", "--network", "host", "--user", f"{uid}:{gid}"]
        for k, v in env.items():
            cmdline += ["-e", f"{k}={v}"]
        for m in mounts:
            cmdline += ["-v", m]
        cmdline += [c.ctr, "--", *argv]
        shown = " ".join(f"{k}={'<secret>' if k in secret else v}" for k, v in sorted(env.items()))
        log(f"start {c.name}: {image} as {uid}:{gid}, argv {argv}, env {shown}")
        c.expected_uid = (uid, gid)
        c.argv = argv
        c.proc = subprocess.Popen(cmdline, stdout=open(c.log_path, "w"), stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def start_redis(self, c: Container, env: dict[str, str]) -> None:
        args = [self.rewrite(c, expand(a, env)) for a in c.spec.get("args", [])]
        port = c.ports[6379]
        data = self.work / "redis-data"
        data.mkdir(exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", c.pod.ip, "--dir", str(data), *args]
        log(f"start {c.name}: host redis-server (image {c.spec['image']} not built here), argv {argv}")
        c.host = True
        c.argv = argv
        c.proc = subprocess.Popen(argv, stdout=open(c.log_path, "w"), stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)

    # -- checks

    def check_running(self, c: Container) -> None:
        if c.host:
            return
        pid = None
        for _ in range(50):
            pid = main_process(c)
            if pid or not c.alive():
                break
            time.sleep(0.1)
        if pid is None:
            fail(f"{c.name}: its process {c.argv[0]} is not running\n{c.log_tail()}")
            return
        uid, gid = uid_of(pid)
        c.pid = pid
        if uid == 0:
            fail(f"{c.name}: the process runs as root")
        elif (uid, gid) != c.expected_uid:
            fail(f"{c.name}: the process runs as {uid}:{gid}, expected {c.expected_uid}")
        else:
            log(f"{c.name}: pid {pid} runs as {uid}:{gid}")

    def metrics(self, c: Container) -> str | None:
        a = c.pod.annotations
        if a.get("prometheus.io/scrape") != "true":
            return None
        url = f"http://{c.pod.ip}:{c.port(int(a.get('prometheus.io/port', '80')))}{a.get('prometheus.io/path', '/metrics')}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read().decode()
                if r.status != 200 or "# TYPE" not in body:
                    fail(f"{c.name}: {url} answered {r.status} without Prometheus text")
                    return None
                return body
        except OSError as e:
            fail(f"{c.name}: {url}: {e}")
            return None

    def scenario(self) -> None:
        proxies = [c for c in self.containers if c.pod.wname == "sio-proxy"]
        nodes = [c for c in self.containers if c.pod.wname == "sio-node"]
        if not proxies or not nodes:
            raise Abort("the overlay has no sio-proxy or no sio-node Deployment")
        p = proxies[0]
        node_env = self.environment(nodes[0])
        env = {**os.environ, "SCENARIO": "cluster", "URL": f"http://{p.pod.ip}:{p.port('http')}",
               "NODE_URLS": ",".join(f"http://{n.pod.ip}:{n.port('http')}" for n in nodes),
               "JWT_SECRET": node_env.get("SIO_JWT_SECRET", ""), "API_KEY": node_env.get("SIO_API_KEY", "")}
        log(f"client scenario tests/js/images.mjs through the proxy at {env['URL']}")
        r = subprocess.run(["node", str(ROOT / "tests/js/images.mjs")], env=env, capture_output=True, text=True,
                           timeout=150)
        if r.returncode != 0:
            fail(f"client scenario failed:\n{r.stdout}{r.stderr}")
        else:
            log(f"client scenario ok: {r.stdout.strip()}")

    def check_metrics(self) -> None:
        nodes = [c for c in self.containers if c.pod.wname == "sio-node"]
        for c in self.containers:
            body = self.metrics(c)
            if body is None:
                continue
            series = {line.split("{")[0].split(" ")[0] for line in body.splitlines() if line and not line.startswith("#")}
            if c.pod.wname == "sio-node":
                want = {"sio_node_ready", "sio_connects_total", "sio_build_info", "sio_adapter_subscribed", "process_open_fds"}
                if not re.search(r"^sio_node_ready(\{[^}]*\})? 1$", body, re.M):
                    fail(f"{c.name}: /metrics: sio_node_ready is not 1")
            else:
                want = {"sio_proxy_requests_total", "sio_proxy_backend_healthy", "process_open_fds"}
                healthy = re.findall(r"^sio_proxy_backend_healthy\{[^}]*\} 1$", body, re.M)
                if len(healthy) != len(nodes):
                    fail(f"{c.name}: /metrics: {len(healthy)} healthy backends, expected the {len(nodes)} nodes "
                         f"(DNS discovery through the Service name)")
            missing = want - series
            if missing:
                fail(f"{c.name}: /metrics lacks {sorted(missing)}")
            else:
                log(f"{c.name}: /metrics ok ({len(series)} series)")

    def stop_all(self) -> None:
        running = [c for c in self.containers if c.alive()]
        for c in running:
            pid = c.proc.pid if c.host else c.pid
            try:
                os.kill(pid or c.proc.pid, signal.SIGTERM)
            except (ProcessLookupError, TypeError):
                pass
        for c in running:
            grace = c.pod.spec.get("terminationGracePeriodSeconds", 30)
            try:
                c.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                fail(f"{c.name}: still running {grace}s after SIGTERM (terminationGracePeriodSeconds)")
                os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait()
                continue
            if not c.host and c.proc.returncode != 0 and c.pid:
                fail(f"{c.name}: exited with {c.proc.returncode} after SIGTERM\n{c.log_tail()}")
        log("stopped every container")

    def check_writes(self) -> None:
        for c in self.containers:
            if c.host or c.upper is None:
                continue
            ro = {**(c.pod.spec.get("securityContext") or {}), **(c.spec.get("securityContext") or {})}.get(
                "readOnlyRootFilesystem", False)
            written = sorted(upper_files(c.upper, c.volumes) - c.before)
            if written and ro:
                fail(f"{c.name}: readOnlyRootFilesystem, but it wrote outside its volumes: {written[:10]}")
            elif written:
                log(f"{c.name}: wrote to its root file system (allowed, readOnlyRootFilesystem is off): {written[:10]}")
            else:
                log(f"{c.name}: wrote nothing outside its volumes {sorted(c.volumes)} (readOnlyRootFilesystem: {ro})")

    def cleanup(self) -> None:
        for c in self.containers:
            if c.alive():
                try:
                    os.killpg(c.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.proc.wait()
            if c.ctr:
                subprocess.run(["buildah", "umount", c.ctr], capture_output=True)
                subprocess.run(["buildah", "rm", c.ctr], capture_output=True)
        if self.args.keep or (problems and not os.environ.get("SIO_IMAGES_TEST_DISCARD")):
            log(f"logs kept in {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


# Each case breaks the overlay one way; the test must fail on it, saying so.
SELF_CHECKS = [
    ("a variable the binary refuses", "sio-node",
     [{"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "SIO_DRAIN_BATCH", "value": "lots"}}],
     "invalid value 'lots'"),
    ("a probe path that answers 404", "sio-proxy",
     [{"op": "replace", "path": "/spec/template/spec/containers/0/readinessProbe/httpGet/path", "value": "/readyz-typo"}],
     "readinessProbe never succeeded"),
    ("root", "sio-node",
     [{"op": "replace", "path": "/spec/template/spec/securityContext/runAsUser", "value": 0}],
     "runs as root"),
    ("a write outside the volumes", "sio-proxy",
     [{"op": "add", "path": "/spec/template/spec/containers/0/command",
       "value": ["/bin/sh", "-c", "echo x > /var/tmp/scratch && exec /usr/local/bin/sio-proxy"]}],
     "wrote outside its volumes"),
]


def self_check(args) -> int:
    """Runs the test on broken copies of the overlay; each must fail with its reason."""
    base = ROOT / "target/images/self-check"
    bad = 0
    for i, (what, deployment, patch, expect) in enumerate(SELF_CHECKS):
        d = base / str(i)
        d.mkdir(parents=True, exist_ok=True)
        (d / "kustomization.yaml").write_text(yaml.safe_dump({
            "resources": [os.path.relpath(ROOT / args.overlay, d)],
            "patches": [{"target": {"kind": "Deployment", "name": deployment}, "patch": yaml.safe_dump(patch)}],
        }))
        r = subprocess.run([sys.executable, __file__, "--overlay", os.path.relpath(d, ROOT), "--ready-within", "10"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300,
                           env={**os.environ, "SIO_IMAGES_TEST_DISCARD": "1"})
        if r.returncode != 0 and expect in r.stdout:
            log(f"self-check: {what} in {deployment}: caught ({expect!r})")
        else:
            bad += 1
            print(f"FAIL: self-check: {what} in {deployment} was not caught (exit {r.returncode}, "
                  f"expected {expect!r}):\n{r.stdout[-3000:]}{r.stderr[-2000:]}", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    print(f"images-test self-check: {len(SELF_CHECKS) - bad} of {len(SELF_CHECKS)} broken overlays caught "
          f"in {time.monotonic() - T0:.0f}s", flush=True)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--overlay", default="k8s/overlays/dev")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--proxies", type=int, default=1)
    ap.add_argument("--ready-within", type=float, default=90,
                    help="seconds a readiness probe may fail after the startup probe passed (the kubelet has no such bound)")
    ap.add_argument("--self-check", action="store_true",
                    help="instead: check that the test fails on broken copies of the overlay")
    ap.add_argument("--keep", action="store_true", help="keep the logs and volumes")
    args = ap.parse_args()
    if args.self_check:
        return self_check(args)
    h = None
    try:
        h = Harness(args)
        h.plan()
        h.start_all()
        later = [c for c in h.containers if c.pod.kind != "StatefulSet"]
        for c in later:
            h.check_running(c)
        for c in later:
            if c.alive() and wait_probe(c, "startupProbe"):
                wait_probe(c, "readinessProbe", bound=args.ready_within)
        if not problems:
            for c in h.containers:
                wait_probe(c, "livenessProbe")
            h.scenario()
            h.check_metrics()
        h.stop_all()
        h.check_writes()
    except Abort as e:
        fail(str(e))
    except subprocess.CalledProcessError as e:
        fail(f"{' '.join(e.cmd)}: exit {e.returncode}: {e.stderr}")
    finally:
        if h is not None:
            h.cleanup()
    took = time.monotonic() - T0
    if problems:
        print(f"images-test: {len(problems)} problem(s) in {took:.0f}s", flush=True)
        return 1
    print(f"images-test: ok in {took:.0f}s ({args.overlay}, {args.nodes} nodes, {args.proxies} proxy)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
