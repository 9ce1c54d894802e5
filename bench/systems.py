"""The systems `make bench` compares, started as foreground child processes on loopback ports.

Every process is started in its own session (so a Ctrl-C reaches only the orchestrator, which
then stops them in order) and recorded in `Procs`; `Procs.stop_all()` runs on exit, on
failure and on SIGINT/SIGTERM. Logs and generated configs go to `target/bench/`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
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


# The baseline of issue 12: bare socketioxide + socketioxide-redis (bench/baselines/
# socketioxide-redis), built by bench/run.sh into its own target directory.
SXR_BIN = Path(os.environ.get(
    "SIO_SXR_BIN", RUN / "build" / "socketioxide-redis" / "release" / "sio-bench-socketioxide-redis"))


def raise_nofile() -> None:
    """Soft open-files limit up to the hard one, in the child before exec."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def child_setup(cpus: set[int] | None):
    """What a child does before exec: more descriptors, and its CPUs when pinned."""
    def setup() -> None:
        raise_nofile()
        if cpus:
            os.sched_setaffinity(0, cpus)
    return setup


def pinning() -> tuple[set[int] | None, set[int] | None]:
    """(servers' CPUs, load generator's CPUs) for "servers sharing one core": servers on the
    first CPU this process may use, the generator on the others; (None, None) on one CPU."""
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        return None, None
    return {mine[0]}, set(mine[1:])


_HELP: dict[str, str] = {}


def node_supports(flag: str) -> bool:
    """Whether this sio-node binary has `flag` (other engineers add flags in parallel: the
    benchmark runs what exists)."""
    if "sio-node" not in _HELP:
        try:
            _HELP["sio-node"] = subprocess.run([str(BIN / "sio-node"), "--help"], capture_output=True,
                                               text=True, timeout=10).stdout
        except OSError:
            _HELP["sio-node"] = ""
    return flag in _HELP["sio-node"]


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
              stdout=None, cpus: set[int] | None = None) -> subprocess.Popen:
        RUN.mkdir(parents=True, exist_ok=True)
        log = open(RUN / f"{name}.log", "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(
            [str(a) for a in argv], stdout=stdout or log, stderr=log, stdin=subprocess.DEVNULL,
            env=full_env, cwd=cwd, start_new_session=True, preexec_fn=child_setup(cpus))
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
    # Prometheus text of each node (`/metrics`), read around steps (sio-load --stats-url).
    stats_urls: list[str] = field(default_factory=list)
    node_ports: list[int] = field(default_factory=list)
    # What the system runs when that differs by binary (e.g. the adapter routing).
    notes: list[str] = field(default_factory=list)

    @property
    def rss_pids(self) -> list[int]:
        """Node(s) and proxy: what memory per connection counts."""
        return self.node_pids + self.proxy_pids

    @property
    def cpu_pids(self) -> list[int]:
        """Everything the system runs on, Redis included."""
        return self.node_pids + self.proxy_pids + self.other_pids


def start_redis(procs: Procs, name: str, cpus: set[int] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    p = procs.spawn(name, ["redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--protected-mode", "no"], cpus=cpus)

    def ping() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(7) == b"+PONG\r\n"
        except OSError:
            return False

    wait_until(name, ping, 10)
    return p, f"redis://127.0.0.1:{port}"


def spawn_sio_node(procs: Procs, name: str, redis_url: str | None = None, prefix: str = "bench",
                   extra: list[str] | None = None, env: dict | None = None,
                   cpus: set[int] | None = None) -> tuple[subprocess.Popen, int]:
    """Starts a sio-node without waiting for it (see `wait_ready`)."""
    port = free_port()
    argv = [BIN / "sio-node", "--listen", f"127.0.0.1:{port}", "--node-id", name, "--auth", "none",
            "--room-auth", "open",
            # one sender socket per room sends far above a chat user's --event-rate
            "--event-rate", "1000000", "--event-burst", "1000000",
            "--api-key", "bench-api-key", "--ping-interval", f"{PING_INTERVAL_MS}ms",
            "--ping-timeout", f"{PING_TIMEOUT_MS}ms"]
    if redis_url:
        argv += ["--redis-url", redis_url, "--redis-prefix", prefix]
    argv += extra or []
    return procs.spawn(name, argv, env={"SIO_LOG": "warn", **(env or {})}, cpus=cpus), port


def wait_ready(name: str, p: subprocess.Popen, port: int, path: str = "/readyz", timeout: float = 30) -> None:
    """Waits until `path` answers 200; fails at once when the process exits."""
    wait_until(name, lambda: http_get(port, path)[0] == 200 or p.poll() is not None, timeout)
    if p.poll() is not None:
        raise RuntimeError(f"{name} exited; see {RUN}/{name}.log")


def start_sio_node(procs: Procs, name: str, redis_url: str | None = None, prefix: str = "bench",
                   extra: list[str] | None = None, env: dict | None = None,
                   cpus: set[int] | None = None) -> tuple[subprocess.Popen, int]:
    p, port = spawn_sio_node(procs, name, redis_url, prefix, extra, env, cpus)
    wait_ready(name, p, port)
    return p, port


def spawn_sxr_node(procs: Procs, name: str, redis_url: str, prefix: str,
                   cpus: set[int] | None = None) -> tuple[subprocess.Popen, int]:
    """Starts the bare socketioxide + socketioxide-redis baseline without waiting for it."""
    if not SXR_BIN.exists():
        raise RuntimeError(f"{SXR_BIN} is missing: bench/run.sh builds it (cargo build --release "
                           f"--manifest-path bench/baselines/socketioxide-redis/Cargo.toml)")
    port = free_port()
    p = procs.spawn(name, [SXR_BIN], cpus=cpus, env={
        "LISTEN": f"127.0.0.1:{port}", "REDIS_URL": redis_url, "REDIS_PREFIX": prefix,
        "PING_INTERVAL": str(PING_INTERVAL_MS), "PING_TIMEOUT": str(PING_TIMEOUT_MS)})
    return p, port


def start_sio_proxy(procs: Procs, name: str, backends: list[int],
                    cpus: set[int] | None = None) -> tuple[subprocess.Popen, int]:
    port, metrics = free_port(), free_port()
    argv = [BIN / "sio-proxy", "--listen", f"127.0.0.1:{port}",
            "--metrics-listen", f"127.0.0.1:{metrics}", "--sid-secret", SID_SECRET,
            # Every generated client comes from 127.0.0.1: lift the per-address limits meant
            # for the internet (as HAProxy and nginx here have none).
            "--handshake-rate", "1000000", "--handshake-burst", "1000000",
            "--max-connections-per-address", "1000000",
            "--max-pending-heads-per-address", "1000000", "--max-pending-heads", "1000000"]
    for b in backends:
        argv += ["--backend", f"127.0.0.1:{b}"]
    p = procs.spawn(name, argv, env={"SIO_LOG": "warn"}, cpus=cpus)
    # The metrics listener's /healthz (the client port forwards only Engine.IO and API paths).
    wait_until(name, lambda: http_get(metrics, "/healthz")[0] == 200 or p.poll() is not None, 30)
    if p.poll() is not None:
        raise RuntimeError(f"{name} exited; see {RUN}/{name}.log")

    def healthy() -> bool:
        _, text = http_get(metrics, "/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("sio_proxy_backend_healthy"):
                total += float(line.rsplit(" ", 1)[1])
        return total >= len(backends)

    wait_until(f"{name} backends", healthy, 30)
    p.metrics_port = metrics  # type: ignore[attr-defined]
    return p, port


def spawn_node_baseline(procs: Procs, name: str, redis_url: str, sid_prefix: str,
                        adapter: str = "classic") -> tuple[subprocess.Popen, int]:
    """Starts a Node Socket.IO process without waiting for it; `adapter` is `classic`
    (createAdapter) or `sharded` (createShardedAdapter, dynamic subscriptions)."""
    port = free_port()
    p = procs.spawn(name, ["node", "server.js"], cwd=NODE_BASELINE, env={
        "PORT": str(port), "REDIS_URL": redis_url, "SID_PREFIX": sid_prefix, "ADAPTER": adapter,
        "PING_INTERVAL": str(PING_INTERVAL_MS), "PING_TIMEOUT": str(PING_TIMEOUT_MS)})
    return p, port


def start_node_baseline(procs: Procs, name: str, redis_url: str, sid_prefix: str) -> tuple[subprocess.Popen, int]:
    p, port = spawn_node_baseline(procs, name, redis_url, sid_prefix)
    wait_ready(name, p, port, "/healthz")
    return p, port


def start_haproxy(procs: Procs, name: str, backends: list[tuple[int, str | None]],
                  cpus: set[int] | None = None) -> tuple[subprocess.Popen, int]:
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
    # One thread per CPU it may use: two on this machine, one when pinned to one core.
    nbthread = len(cpus) if cpus else min(os.cpu_count() or 2, 2)
    cfg.write_text(template.safe_substitute(port=port, use_servers="\n".join(use), servers="\n".join(servers),
                                            nbthread=nbthread))
    p = procs.spawn(name, ["haproxy", "-f", cfg, "-db"], cpus=cpus)
    wait_until(name, lambda: http_get(port, "/healthz")[0] == 200 or p.poll() is not None, 20)
    if p.poll() is not None:
        raise RuntimeError(f"{name} exited; see {RUN}/{name}.log")
    return p, port


def start_nginx(procs: Procs, name: str, backends: list[int],
                cpus: set[int] | None = None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    d = RUN / name
    d.mkdir(parents=True, exist_ok=True)
    template = string.Template((ROOT / "bench/baselines/nginx/nginx.conf.in").read_text())
    servers = "\n".join(f"        server 127.0.0.1:{b};" for b in backends)
    cfg = d / "nginx.conf"
    cfg.write_text(template.safe_substitute(port=port, dir=d, servers=servers))
    p = procs.spawn(name, ["nginx", "-c", cfg, "-p", d, "-e", d / "error.log"], cpus=cpus)
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
    "sio-redis2": "sio-node x2 on Redis",
    "sxr2": "socketioxide + socketioxide-redis x2 on Redis (bare)",
    "scale-rooms": "sio-cluster, --adapter-routing rooms",
    "scale-broadcast": "sio-cluster, --adapter-routing broadcast",
    "scale-node": "Node Socket.IO, sharded adapter (dynamic) + nginx",
    "proxy-direct": "1 sio-node direct",
    "proxy-sioproxy": "1 sio-node + sio-proxy",
    "proxy-haproxy": "1 sio-node + HAProxy",
}


def start_system(procs: Procs, key: str, node_flags: list[str] | None = None,
                 node_env: dict | None = None, cpus: set[int] | None = None) -> System:
    """Starts system `key` and waits until it is ready (its processes on `cpus` if given)."""
    tag = f"{key}-{int(time.time() * 1000) % 100000}"
    s = System(key=key, label=LABELS.get(key, key), url="")
    if key in ("sio-redis2", "sxr2"):
        # Two nodes on one Redis, clients on the nodes directly (issue 12's 2-node comparison).
        redis, redis_url = start_redis(procs, f"{tag}-redis", cpus=cpus)
        prefix = f"b{tag.split('-')[-1]}"
        started = []
        for i in range(2):
            name = f"{tag}-node{i + 1}"
            if key == "sio-redis2":
                started.append((name, *spawn_sio_node(procs, name, redis_url, prefix, node_flags, node_env, cpus)))
            else:
                started.append((name, *spawn_sxr_node(procs, name, redis_url, prefix, cpus)))
        for name, p, port in started:
            wait_ready(name, p, port)
            s.node_pids.append(p.pid)
            s.procs.append(p)
            s.node_ports.append(port)
        s.other_pids.append(redis.pid)
        s.procs.append(redis)
        s.node_urls = [url(p) for p in s.node_ports]
        if key == "sio-redis2":
            s.stats_urls = [f"http://127.0.0.1:{p}/metrics" for p in s.node_ports]
        s.url = ",".join(s.node_urls)
        return s
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


class Unsupported(RuntimeError):
    """The binaries under test do not have what a system needs yet."""


def start_scaleout(procs: Procs, kind: str, n: int) -> System:
    """N nodes on one Redis behind a proxy that hashes the client address (issue 12's scale-out):
    `rooms` / `broadcast`: sio-nodes with that `--adapter-routing`, behind sio-proxy (ip-hash);
    `node`: Node Socket.IO with the sharded adapter in dynamic mode, behind nginx
    (`hash $remote_addr consistent`), each process minting sids that start with `nXX`."""
    key = f"scale-{kind}"
    tag = f"{key}{n}-{int(time.time() * 1000) % 100000}"
    s = System(key=key, label=LABELS[key], url="")
    flags: list[str] = []
    if kind in ("rooms", "broadcast"):
        if node_supports("--adapter-routing"):
            flags = ["--adapter-routing", kind]
        elif kind == "rooms":
            raise Unsupported("this sio-node has no --adapter-routing yet (issue 12): rooms routing not measured")
        else:
            s.notes.append("this sio-node has no --adapter-routing: it runs its only routing, every "
                           "room message to every node (= broadcast)")
    redis, redis_url = start_redis(procs, f"{tag}-redis")
    s.other_pids.append(redis.pid)
    s.procs.append(redis)
    started = []
    for i in range(n):
        name = f"{tag}-node{i + 1}"
        if kind == "node":
            started.append((name, *spawn_node_baseline(procs, name, redis_url, f"n{i:02d}", "sharded")))
        else:
            started.append((name, *spawn_sio_node(procs, name, redis_url, f"b{tag.split('-')[-1]}", flags)))
    for name, p, port in started:
        s.procs.append(p)  # stopped on failure too
        wait_ready(name, p, port, "/healthz" if kind == "node" else "/readyz", timeout=60)
        s.node_pids.append(p.pid)
        s.node_ports.append(port)
    s.node_urls = [url(p) for p in s.node_ports]
    s.stats_urls = [f"http://127.0.0.1:{p}/metrics" for p in s.node_ports]
    if kind == "node":
        lb, port = start_nginx(procs, f"{tag}-nginx", s.node_ports)
    else:
        lb, port = start_sio_proxy(procs, f"{tag}-proxy", s.node_ports)
    s.proxy_pids.append(lb.pid)
    s.procs.append(lb)
    s.url = url(port)
    return s


def sio_proxy_tag(backend_port: int) -> str:
    """The tag sio-proxy puts before the sids of a backend (crates/sio-proxy/src/routing.rs):
    base64url of the first 6 bytes of HMAC-SHA256(secret, context + "ip:port")."""
    mac = hmac.new(SID_SECRET.encode(), b"sio-proxy/backend-tag/v1\n" + f"127.0.0.1:{backend_port}".encode(),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:6]).decode()


def node_of_address(s: System, addr: str) -> str | None:
    """Which node a new session from source address `addr` lands on through the system's
    proxy: an Engine.IO handshake from that address, its sid read (sio-proxy's backend tag, or
    the Node process's sid prefix), then the session closed. `None` when the handshake failed."""
    host, port = s.url.split("//", 1)[1].split("/", 1)[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=3, source_address=(addr, 0))
    try:
        conn.request("GET", "/socket.io/?EIO=4&transport=polling")
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        if r.status != 200 or not body.startswith("0{"):
            return None
        sid = json.loads(body[1:])["sid"]
        conn.request("POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}", body=b"1",
                     headers={"Content-Type": "text/plain;charset=UTF-8"})
        conn.getresponse().read()
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    if s.key == "scale-node":
        return sid[:3]
    tags = {sio_proxy_tag(p): f"node{i + 1}" for i, p in enumerate(s.node_ports)}
    # An unknown tag (sio-proxy changed its scheme) still groups the sessions of one node.
    return tags.get(sid[:8], f"tag:{sid[:8]}")


def place_rooms(s: System, rooms: int, max_probes: int = 4000) -> dict:
    """Source addresses that put `rooms` rooms evenly on the system's nodes: probes addresses
    127.1.x.y through the proxy until every node has rooms / N of them. Returns the address of
    each room (room r on node r mod N) and how many rooms each node got."""
    n = len(s.node_pids)
    need = -(-rooms // n)
    groups: dict[str, list[str]] = {}
    probes = failed = 0
    for k in range(max_probes):
        addr = f"127.1.{k // 250}.{k % 250 + 1}"
        probes += 1
        node = node_of_address(s, addr)
        if node is None:
            failed += 1
            if failed > 20 and failed * 2 > probes:
                raise RuntimeError(f"placement: {failed} of {probes} handshakes through {s.url} failed")
            continue
        groups.setdefault(node, []).append(addr)
        if len(groups) >= n and all(len(g) >= need for g in groups.values()):
            break
    names = sorted(groups, key=lambda g: -len(groups[g]))[:n]
    addrs, per_node = [], {g: 0 for g in names}
    for r in range(rooms):
        g = names[r % len(names)]
        pool = groups[g]
        addrs.append(pool[(r // len(names)) % len(pool)])
        per_node[g] += 1
    return {"addresses": addrs, "rooms_per_node": per_node, "probes": probes,
            "nodes_reached": len(groups), "failed_probes": failed}


def stop_system(procs: Procs, s: System) -> None:
    for p in reversed(s.procs):
        procs.stop(p)
