"""The systems `make bench` compares, started as foreground child processes on loopback ports.

Every process is started in its own session (so a Ctrl-C reaches only the orchestrator, which
then stops them in order) and recorded in `Procs`; `Procs.stop_all()` runs on exit, on
failure and on SIGINT/SIGTERM. Logs and generated configs go to `target/bench/`.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import string
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("SIO_BIN_DIR", ROOT / "target" / "release"))
RUN = ROOT / "target" / "bench"
NODE_BASELINE = ROOT / "bench" / "baselines" / "node"
# Engine.IO ping settings of every system (sio-node's and socket.io's defaults).
PING_INTERVAL_MS = 25_000
PING_TIMEOUT_MS = 20_000
SID_SECRET = "bench-sid-secret-shared-by-every-replica"
LIBDIR = Path("/usr/lib/x86_64-linux-gnu")


def raise_nofile() -> None:
    """Soft open-files limit up to the hard one, in the child before exec."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 1.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def wait_until(what: str, check, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s (logs in {RUN})")


class Procs:
    """Every process the benchmark started, stopped in reverse order."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def spawn(self, name: str, argv: list[str], env: dict | None = None, cwd: Path | None = None,
              stdout=None) -> subprocess.Popen:
        RUN.mkdir(parents=True, exist_ok=True)
        log = open(RUN / f"{name}.log", "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(
            [str(a) for a in argv], stdout=stdout or log, stderr=log, stdin=subprocess.DEVNULL,
            env=full_env, cwd=cwd, start_new_session=True, preexec_fn=raise_nofile)
        p.bench_name = name  # type: ignore[attr-defined]
        self.running.append(p)
        return p

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        else:
            # The leader is gone (a storm killed it); its group may still hold children.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if p in self.running:
            self.running.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.running)):
            self.stop(p, grace=3.0)


@dataclass
class System:
    """A running system: where clients connect and which processes it is made of."""

    key: str
    label: str
    url: str
    node_pids: list[int] = field(default_factory=list)
    proxy_pids: list[int] = field(default_factory=list)
    other_pids: list[int] = field(default_factory=list)
    node_urls: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def rss_pids(self) -> list[int]:
        """Node(s) and proxy: what memory per connection counts."""
        return self.node_pids + self.proxy_pids

    @property
    def cpu_pids(self) -> list[int]:
        """Everything the system runs on, Redis included."""
        return self.node_pids + self.proxy_pids + self.other_pids


def start_redis(procs: Procs, name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    p = procs.spawn(name, ["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--protected-mode", "no"])

    def ping() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    wait_until(name, ping, 10)
    return p, f"redis://127.0.0.1:{port}"


def start_sio_node(procs: Procs, name: str, redis_url: str | None = None, prefix: str = "bench",
                   extra: list[str] | None = None, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    argv = [BIN / "sio-node", "--listen", f"127.0.0.1:{port}", "--node-id", name, "--auth", "none",
            "--room-auth", "open",
            "--api-key", "bench-api-key", "--ping-interval", f"{PING_INTERVAL_MS}ms",
            "--ping-timeout", f"{PING_TIMEOUT_MS}ms"]
    if redis_url:
        argv += ["--redis-url", redis_url, "--redis-prefix", prefix]
    argv += extra or []
    p = procs.spawn(name, argv, env={"SIO_LOG": "warn", **(env or {})})
    wait_until(name, lambda: http_get(port, "/readyz")[0] == 200 or p.poll() is not None, 30)
    if p.poll() is not None:
        raise RuntimeError(f"{name} exited; see {RUN}/{name}.log")
    return p, port


def start_sio_proxy(procs: Procs, name: str, backends: list[int]) -> tuple[subprocess.Popen, int]:
    port, metrics = free_port(), free_port()
    argv = [BIN / "sio-proxy", "--listen", f"127.0.0.1:{port}",
            "--metrics-listen", f"127.0.0.1:{metrics}", "--sid-secret", SID_SECRET]
    for b in backends:
        argv += ["--backend", f"127.0.0.1:{b}"]
    p = procs.spawn(name, argv, env={"SIO_LOG": "warn"})
    wait_until(name, lambda: http_get(port, "/healthz")[0] == 200, 30)

    def healthy() -> bool:
        _, text = http_get(metrics, "/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("sio_proxy_backend_healthy"):
                total += float(line.rsplit(" ", 1)[1])
        return total >= len(backends)

    wait_until(f"{name} backends", healthy, 30)
    return p, port


def start_node_baseline(procs: Procs, name: str, redis_url: str, sid_prefix: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    p = procs.spawn(name, ["node", "server.js"], cwd=NODE_BASELINE, env={
        "PORT": str(port), "REDIS_URL": redis_url, "SID_PREFIX": sid_prefix,
        "PING_INTERVAL": str(PING_INTERVAL_MS), "PING_TIMEOUT": str(PING_TIMEOUT_MS)})
    wait_until(name, lambda: http_get(port, "/healthz")[0] == 200 or p.poll() is not None, 30)
    if p.poll() is not None:
        raise RuntimeError(f"{name} exited; see {RUN}/{name}.log")
    return p, port


def start_haproxy(procs: Procs, name: str, backends: list[tuple[int, str | None]]) -> tuple[subprocess.Popen, int]:
    """HAProxy in front of `backends` (port, sid prefix or None)."""
    port = free_port()
    template = string.Template((ROOT / "bench/baselines/haproxy/haproxy.cfg.in").read_text())
    use, servers = [], []
    for i, (b, prefix) in enumerate(backends):
        if prefix:
            use.append(f"    use-server s{i} if {{ url_param(sid) -m beg {prefix} }}")
        servers.append(f"    server s{i} 127.0.0.1:{b} check inter 2s")
    cfg = RUN / f"{name}.cfg"
    RUN.mkdir(parents=True, exist_ok=True)
    cfg.write_text(template.safe_substitute(port=port, use_servers="\n".join(use), servers="\n".join(servers)))
    p = procs.spawn(name, ["haproxy", "-f", cfg, "-db"])
    wait_until(name, lambda: http_get(port, "/healthz")[0] == 200 or p.poll() is not None, 20)
    if p.poll() is not None:
        raise RuntimeError(f"{name} exited; see {RUN}/{name}.log")
    return p, port


def start_nginx(procs: Procs, name: str, backends: list[int]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    d = RUN / name
    d.mkdir(parents=True, exist_ok=True)
    template = string.Template((ROOT / "bench/baselines/nginx/nginx.conf.in").read_text())
    servers = "\n".join(f"        server 127.0.0.1:{b};" for b in backends)
    cfg = d / "nginx.conf"
    cfg.write_text(template.safe_substitute(port=port, dir=d, servers=servers))
    p = procs.spawn(name, ["nginx", "-c", cfg, "-p", d, "-e", d / "error.log"])
    wait_until(name, lambda: http_get(port, "/healthz")[0] == 200 or p.poll() is not None, 20)
    if p.poll() is not None:
        raise RuntimeError(f"{name} exited; see {RUN}/{name}.log and {d}/error.log")
    return p, port


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}/socket.io/"


# --- the systems -------------------------------------------------------------------------

LABELS = {
    "node-haproxy": "Node Socket.IO x2 + HAProxy",
    "node-nginx": "Node Socket.IO x2 + nginx",
    "socketioxide": "socketioxide direct (1 sio-node)",
    "sioxide-sioproxy": "1 sio-node + sio-proxy",
    "sioxide-haproxy": "1 sio-node + HAProxy",
    "sio-cluster": "sio-cluster (3 sio-nodes, Redis, sio-proxy)",
    "sio-cluster-1t": "sio-cluster, 1 tokio thread per node",
}


def start_system(procs: Procs, key: str, node_flags: list[str] | None = None,
                 node_env: dict | None = None) -> System:
    """Starts system `key` and waits until it is ready."""
    tag = f"{key}-{int(time.time() * 1000) % 100000}"
    s = System(key=key, label=LABELS.get(key, key), url="")
    if key in ("node-haproxy", "node-nginx"):
        redis, redis_url = start_redis(procs, f"{tag}-redis")
        ports = []
        for i, prefix in enumerate("ab"):
            p, port = start_node_baseline(procs, f"{tag}-node{i + 1}", redis_url, prefix)
            s.node_pids.append(p.pid)
            s.procs.append(p)
            ports.append(port)
        if key == "node-haproxy":
            lb, port = start_haproxy(procs, f"{tag}-haproxy", list(zip(ports, "ab")))
        else:
            lb, port = start_nginx(procs, f"{tag}-nginx", ports)
        s.proxy_pids.append(lb.pid)
        s.other_pids.append(redis.pid)
        s.procs += [lb, redis]
        s.node_urls = [url(p) for p in ports]
        s.url = url(port)
    elif key in ("socketioxide", "sioxide-sioproxy", "sioxide-haproxy"):
        p, port = start_sio_node(procs, f"{tag}-node", extra=node_flags, env=node_env)
        s.node_pids.append(p.pid)
        s.procs.append(p)
        s.node_urls = [url(port)]
        if key == "socketioxide":
            s.url = url(port)
        else:
            if key == "sioxide-sioproxy":
                lb, lport = start_sio_proxy(procs, f"{tag}-proxy", [port])
            else:
                lb, lport = start_haproxy(procs, f"{tag}-haproxy", [(port, None)])
            s.proxy_pids.append(lb.pid)
            s.procs.append(lb)
            s.url = url(lport)
    elif key in ("sio-cluster", "sio-cluster-1t"):
        if key == "sio-cluster-1t":
            # Three nodes with a worker thread per core each oversubscribe two cores.
            node_env = {**(node_env or {}), "TOKIO_WORKER_THREADS": "1"}
        redis, redis_url = start_redis(procs, f"{tag}-redis")
        ports = []
        for i in range(3):
            p, port = start_sio_node(procs, f"{tag}-node{i + 1}", redis_url=redis_url,
                                     prefix=f"b{tag.split('-')[-1]}", extra=node_flags, env=node_env)
            s.node_pids.append(p.pid)
            s.procs.append(p)
            ports.append(port)
        lb, lport = start_sio_proxy(procs, f"{tag}-proxy", ports)
        s.proxy_pids.append(lb.pid)
        s.other_pids.append(redis.pid)
        s.procs += [lb, redis]
        s.node_urls = [url(p) for p in ports]
        s.url = url(lport)
    else:
        raise ValueError(key)
    return s


def stop_system(procs: Procs, s: System) -> None:
    for p in reversed(s.procs):
        procs.stop(p)
