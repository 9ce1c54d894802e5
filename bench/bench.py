#!/usr/bin/env python3
"""`make bench`: sio-cluster side by side with Node Socket.IO (behind HAProxy and nginx) and
socketioxide served directly, in one run on this machine.

Starts every system itself (bench/systems.py), drives them with the `sio-load` generator
(tests/src/bin/sio-load), alternates systems between repetitions, takes medians, and writes
bench/results/<date>.json, bench/results/<date>.md and the charts in bench/results/<date>/.
Stops every process it started, also on Ctrl-C and on failure.

    python3 bench/bench.py [--quick] [--only idle,fanout,...] [--out bench/results]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, str(Path(__file__).resolve().parent))

import systems  # noqa: E402
from systems import BIN, RUN, LIBDIR, Procs, start_system, stop_system  # noqa: E402

LOAD = BIN / "sio-load"
# Fan-out ladders, deliveries per second (a step fails at p99 > 50 ms or any loss).
LADDER_WS = [20_000, 30_000, 40_000, 50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 400_000,
             500_000, 650_000, 800_000, 1_000_000]
LADDER_POLLING = [1_000, 2_500, 5_000, 10_000, 20_000, 50_000, 100_000, 150_000]
ALL_SYSTEMS = ["node-haproxy", "node-nginx", "socketioxide", "sioxide-sioproxy", "sioxide-haproxy",
               "sio-cluster", "sio-cluster-1t"]
PROXY_SYSTEMS = ALL_SYSTEMS[:-1]
MAIN_SYSTEMS = ["node-haproxy", "node-nginx", "socketioxide", "sio-cluster"]
IDLE_STEPS = [1000, 5000, 9000]
SCENARIOS = ["idle", "settings", "fanout", "crossnode", "storm", "profile", "heap"]


# Whole `make bench` budget: bench/run.sh exports when it started (before building).
DEADLINE = float(os.environ.get("BENCH_DEADLINE", "0")) or (time.time() + 28 * 60)
# What the scenarios after the fan-out ladders need, roughly, on this machine.
AFTER_FANOUT_SECS = 6 * 60


def left() -> float:
    """Seconds left in the budget."""
    return DEADLINE - time.time()


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def csv(values) -> str:
    return ",".join(str(int(v)) for v in values)


def sio_load(procs: Procs, name: str, args: list, timeout: float = 600) -> dict:
    """Runs one `sio-load run` and returns its JSON report."""
    out = RUN / "raw" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    p = procs.spawn(f"load-{name}", [LOAD, "run", *[str(a) for a in args], "--json", out],
                    stdout=subprocess.DEVNULL)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        procs.stop(p)
        raise RuntimeError(f"sio-load {name} took longer than {timeout:.0f}s")
    procs.stop(p)
    progress = (RUN / f"load-{name}.log").read_text(errors="replace").strip()
    if progress:
        print("\n".join(f"    {line}" for line in progress.splitlines()[-12:]), file=sys.stderr, flush=True)
    if p.returncode != 0 or not out.exists():
        tail = (RUN / f"load-{name}.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"sio-load {name} failed ({p.returncode}):\n{tail}")
    return json.loads(out.read_text())


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.quick = args.quick
        self.procs = Procs()
        self.results: dict = {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "loadavg_at_start": os.getloadavg()},
            "settings": {"ping_interval_ms": systems.PING_INTERVAL_MS,
                         "ping_timeout_ms": systems.PING_TIMEOUT_MS, "quick": self.quick},
            "labels": systems.LABELS,
            "commit": git_describe(),
            "scenario_secs": {},
            "errors": [],
        }

    def error(self, where: str, e: BaseException) -> None:
        log(f"ERROR in {where}: {e}")
        self.results["errors"].append({"where": where, "error": str(e)[-2000:]})

    # --- idle capacity ------------------------------------------------------------------
    def idle(self) -> None:
        out = self.results["idle"] = []
        steps = [1000, 3000] if self.quick else IDLE_STEPS
        for transport in ("websocket", "polling"):
            for key in MAIN_SYSTEMS:
                s = None
                try:
                    s = start_system(self.procs, key)
                    time.sleep(1.0)
                    r = sio_load(self.procs, f"idle-{transport}-{key}", [
                        "--url", s.url, "--transport", transport, "--idle-steps", csv(steps),
                        "--rss-pids", csv(s.rss_pids), "--settle", "2s", "--sources", "32",
                        "--connect-concurrency", "200", f"--label={key}"], timeout=300)
                    out.append(self.idle_summary(s, transport, r))
                except Exception as e:  # noqa: BLE001 - one failing system must not end the run
                    self.error(f"idle {transport} {key}", e)
                finally:
                    if s:
                        stop_system(self.procs, s)

    @staticmethod
    def idle_summary(s, transport: str, r: dict) -> dict:
        points = []
        for pt in r["idle"]:
            n = max(pt["connected"], 1)
            by, base = pt["rss_by_pid"], pt["base_rss_by_pid"]

            def delta(pids):
                return sum(by.get(str(p), 0) - base.get(str(p), 0) for p in pids) / n

            def total(pids):
                return sum(by.get(str(p), 0) for p in pids)

            points.append({
                "connections": pt["connections"], "connected": pt["connected"],
                "rss_bytes": pt["rss_bytes"],
                "rss_per_connection": pt["rss_per_connection_bytes"],
                "delta_per_connection": pt["delta_rss_per_connection_bytes"],
                "node_rss_bytes": total(s.node_pids), "proxy_rss_bytes": total(s.proxy_pids),
                "node_delta_per_connection": delta(s.node_pids),
                "proxy_delta_per_connection": delta(s.proxy_pids) if s.proxy_pids else None,
            })
        return {"system": s.key, "transport": transport, "points": points,
                "connect_failed": r["connect_failed"], "first_error": r.get("first_error")}

    # --- sio-node memory settings ---------------------------------------------------------
    def settings(self) -> None:
        out = self.results["memory_settings"] = []
        jemalloc = LIBDIR / "libjemalloc.so.2"
        mimalloc = LIBDIR / "libmimalloc.so.2"
        variants = [
            ("defaults (--ws-read-buffer 1024, --max-buffer-size 1024, glibc)", [], {}),
            ("--ws-read-buffer 4096 (socketioxide's default)", ["--ws-read-buffer", "4096"], {}),
            ("--ws-read-buffer 256", ["--ws-read-buffer", "256"], {}),
            ("--max-buffer-size 128", ["--max-buffer-size", "128"], {}),
            ("glibc MALLOC_ARENA_MAX=2", [], {"MALLOC_ARENA_MAX": "2"}),
            ("jemalloc (LD_PRELOAD)", [], {"LD_PRELOAD": str(jemalloc)}),
            ("mimalloc (LD_PRELOAD)", [], {"LD_PRELOAD": str(mimalloc)}),
            ("read buffer 1024 + max buffer 128 + jemalloc",
             ["--ws-read-buffer", "1024", "--max-buffer-size", "128"], {"LD_PRELOAD": str(jemalloc)}),
        ]
        if self.quick:
            variants = variants[:2]
        steps = [1000, 3000] if self.quick else [1000, 9000]
        rates = [200_000, 400_000]
        for i, (name, flags, env) in enumerate(variants):
            if left() < 60:
                self.error("settings", RuntimeError(f"time budget spent: {name} and later skipped"))
                break
            if "LD_PRELOAD" in env and not Path(env["LD_PRELOAD"]).exists():
                self.error(f"settings {name}", RuntimeError(f"{env['LD_PRELOAD']} is not installed"))
                continue
            s = None
            try:
                s = start_system(self.procs, "socketioxide", node_flags=flags, node_env=env)
                time.sleep(1.0)
                idle = sio_load(self.procs, f"settings-{i}-idle", [
                    "--url", s.url, "--idle-steps", csv(steps), "--rss-pids", csv(s.rss_pids),
                    "--settle", "2s", "--sources", "32", "--connect-concurrency", "200"], timeout=240)
                fan = sio_load(self.procs, f"settings-{i}-fanout", [
                    "--url", s.url, "--clients", "1000", "--room-size", "1000", "--rates", csv(rates),
                    "--keep-going", "--step-duration", "1500ms", "--settle", "1s",
                    "--cpu-pids", csv(s.cpu_pids), f"--label={name}"], timeout=240)
                pts = idle["idle"]
                first, last = pts[0], pts[-1]
                marginal = (last["rss_bytes"] - first["rss_bytes"]) / max(last["connected"] - first["connected"], 1)
                out.append({
                    "variant": name, "flags": flags, "env": env,
                    "points": [{"connections": p["connected"], "rss_bytes": p["rss_bytes"],
                                "delta_per_connection": p["delta_rss_per_connection_bytes"]} for p in pts],
                    "marginal_per_connection": marginal,
                    "fanout": [{"target": st["target_deliveries_per_sec"],
                                "deliveries_per_sec": st["deliveries_per_sec"],
                                "p99_ms": st["latency"]["p99_ms"], "pass": st["pass"],
                                "fail_reason": st["fail_reason"],
                                "cpu_per_1000": st["cpu_secs_per_1000_deliveries"]}
                               for st in fan["steps"]],
                })
                log(f"settings {name}: {marginal / 1024:.1f} KiB per connection (marginal)")
            except Exception as e:  # noqa: BLE001
                self.error(f"settings {name}", e)
            finally:
                if s:
                    stop_system(self.procs, s)

    # --- fan-out ladders ------------------------------------------------------------------
    def fanout(self) -> None:
        out = self.results["fanout"] = []
        reps_main = 1 if self.quick else 3
        # Rooms of 10: 900 rooms (9,000 clients) on WebSocket and 500 (5,000) on polling, not
        # 1,000: a proxy process holds two descriptors per session (plus a sender's POST
        # connection on polling) and 20,000 descriptors is the hard limit per process here.
        configs = [  # transport, clients, room size, systems, repetitions
            ("websocket", 1000, 1000, ALL_SYSTEMS, reps_main),
            ("websocket", 9000, 10, MAIN_SYSTEMS, 1),
            ("polling", 1000, 1000, PROXY_SYSTEMS, 1),
            ("polling", 5000, 10, MAIN_SYSTEMS, 1),
        ]
        if self.quick:
            configs = configs[:1] + configs[2:3]
        if "fanout" not in self.selected:
            configs = []  # cross-node or profile alone: start the systems, skip the ladders
        running: dict[str, systems.System] = {}
        try:
            for key in ALL_SYSTEMS:
                try:
                    running[key] = start_system(self.procs, key)
                except Exception as e:  # noqa: BLE001
                    self.error(f"start {key}", e)
            time.sleep(1.0)
            for transport, clients, room_size, keys, reps in configs:
                keys = [k for k in keys if k in running]
                ladder = LADDER_WS if transport == "websocket" else LADDER_POLLING
                if self.quick:
                    ladder = ladder[:4]
                shape = f"{clients // room_size}x{room_size}"
                entry = {"transport": transport, "clients": clients, "room_size": room_size,
                         "shape": shape, "ladder": ladder, "reps": reps, "runs": {k: [] for k in keys}}
                out.append(entry)
                for rep in range(reps):
                    if rep > 0 and left() < AFTER_FANOUT_SECS + 150:
                        log(f"{entry['shape']} {transport}: {rep} repetition(s) only, to stay in the time budget")
                        entry["reps"] = rep
                        break
                    order = keys[rep % len(keys):] + keys[:rep % len(keys)]
                    for key in order:
                        s = running[key]
                        name = f"fanout-{transport}-{shape}-{key}-{rep + 1}"
                        try:
                            r = sio_load(self.procs, name, [
                                "--url", s.url, "--transport", transport, "--clients", clients,
                                "--room-size", room_size, "--rates", csv(ladder),
                                "--step-duration", "1500ms", "--drain-timeout", "4s", "--settle", "1s",
                                "--cpu-pids", csv(s.cpu_pids), "--sources", "32",
                                "--connect-concurrency", "200", f"--label={name}"], timeout=300)
                            entry["runs"][key].append(slim_run(r))
                        except Exception as e:  # noqa: BLE001
                            self.error(name, e)
            self.crossnode(running)
            self.profile(running)
        finally:
            for s in running.values():
                stop_system(self.procs, s)

    # --- cross-node broadcast through Redis ---------------------------------------------------
    def crossnode(self, running: dict) -> None:
        if "crossnode" not in self.selected:
            return
        t0 = time.monotonic()
        out = self.results["crossnode"] = {"runs": {}}
        rates = [10_000, 50_000]
        plan = [("sio-cluster", 999), ("node-haproxy", 1000)]
        for rep in range(1 if self.quick else 2):
            for key, clients in (plan if rep % 2 == 0 else plan[::-1]):
                s = running.get(key)
                if not s:
                    continue
                name = f"crossnode-{key}-{rep + 1}"
                try:
                    r = sio_load(self.procs, name, [
                        "--url", ",".join(s.node_urls), "--clients", clients, "--room-size", clients,
                        "--rates", csv(rates), "--keep-going", "--step-duration", "2s",
                        "--settle", "1s", "--cpu-pids", csv(s.cpu_pids), f"--label={name}"], timeout=240)
                    out["runs"].setdefault(key, []).append(slim_run(r))
                except Exception as e:  # noqa: BLE001
                    self.error(name, e)
        self.results["scenario_secs"]["crossnode"] = time.monotonic() - t0

    # --- profile of sio-cluster under fan-out -----------------------------------------------
    def profile(self, running: dict) -> None:
        if "profile" not in self.selected or "sio-cluster" not in running:
            return
        t0 = time.monotonic()
        s = running["sio-cluster"]
        out = self.results["profile"] = {}
        best = [r["max_passing_deliveries_per_sec"] for e in self.results.get("fanout", [])
                if e["transport"] == "websocket" and e["room_size"] == 1000
                for r in e["runs"].get("sio-cluster", [])]
        rate = 200_000
        out["rate"] = rate
        pids = {p: f"sio-node-{i + 1}" for i, p in enumerate(s.node_pids)}
        pids.update({p: "sio-proxy" for p in s.proxy_pids})
        pids.update({p: "redis-server" for p in s.other_pids})
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu(pid: int) -> float:
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(f[11]) + int(f[12])) / ticks
            except OSError:
                return 0.0

        perf_data = RUN / "perf-sio-cluster.data"
        perf = None
        try:
            load = self.procs.spawn("load-profile", [
                LOAD, "run", "--url", s.url, "--clients", "1000", "--room-size", "1000",
                "--rates", str(rate), "--keep-going", "--step-duration", "5s", "--settle", "1s",
                "--json", RUN / "raw" / "profile.json"], stdout=subprocess.DEVNULL)
            time.sleep(4.0)  # connect and join, then record while the step runs
            before = {p: cpu(p) for p in pids}
            perf = self.procs.spawn("perf-record", [
                "perf", "record", "-F", "499", "-o", perf_data, "-p", ",".join(map(str, pids)),
                "--", "sleep", "4"])
            perf.wait(30)
            after = {p: cpu(p) for p in pids}
            load.wait(120)
            self.procs.stop(load)
            out["cpu_secs_in_4s"] = {name: round(after[p] - before[p], 3) for p, name in pids.items()}
            out["best_rate_seen"] = best
            report = subprocess.run(
                ["perf", "report", "-i", str(perf_data), "--stdio", "--no-children",
                 "--sort", "dso,sym", "--percent-limit", "1"],
                capture_output=True, text=True, timeout=120)
            lines = [ln for ln in report.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
            out["top"] = lines[:40]
            if not lines:
                out["perf_error"] = (report.stderr or "perf report printed nothing")[-500:]
        except Exception as e:  # noqa: BLE001
            self.error("profile", e)
        finally:
            if perf:
                self.procs.stop(perf)
            perf_data.unlink(missing_ok=True)
        self.results["scenario_secs"]["profile"] = time.monotonic() - t0

    # --- reconnect storm -----------------------------------------------------------------------
    def storm(self) -> None:
        out = self.results["storm"] = []
        clients = 1500 if self.quick else 6000
        for key in ("sio-cluster", "node-haproxy"):
            s = None
            try:
                s = start_system(self.procs, key)
                time.sleep(1.0)
                r = sio_load(self.procs, f"storm-{key}", [
                    "--url", s.url, "--clients", clients, "--storm-pids", csv(s.node_pids),
                    "--sources", "64", "--connect-concurrency", "200", "--settle", "2s",
                    "--storm-timeout", "60s", f"--label={key}"], timeout=240)
                out.append({"system": key, **(r.get("storm") or {}), "connected": r["connected"]})
            except Exception as e:  # noqa: BLE001
                self.error(f"storm {key}", e)
            finally:
                if s:
                    stop_system(self.procs, s)

    # --- where an idle connection's heap goes (valgrind DHAT) ----------------------------------
    def heap(self) -> None:
        """Heap of one sio-node at its peak with N idle WebSocket clients, by allocation site."""
        n = 500 if self.quick else 2000
        out_file = RUN / "dhat.out"
        out_file.unlink(missing_ok=True)
        port = systems.free_port()
        node = None
        try:
            node = self.procs.spawn("dhat-sio-node", [
                "valgrind", "--tool=dhat", f"--dhat-out-file={out_file}", BIN / "sio-node",
                "--listen", f"127.0.0.1:{port}", "--auth", "none", "--room-auth", "open", "--node-id", "dhat",
                "--shutdown-grace", "3s", "--drain-delay", "0s"], env={"SIO_LOG": "warn"})
            systems.wait_until("sio-node under valgrind",
                               lambda: systems.http_get(port, "/readyz")[0] == 200, 120)
            sio_load(self.procs, "heap", [
                "--url", systems.url(port), "--idle-steps", n, "--settle", "3s",
                "--rss-pids", node.pid, "--connect-concurrency", "50"], timeout=300)
            self.procs.stop(node, grace=120)  # DHAT writes its profile on exit
            node = None
            self.results["heap"] = dhat_summary(json.loads(out_file.read_text()), n)
        except Exception as e:  # noqa: BLE001
            self.error("heap", e)
        finally:
            if node:
                self.procs.stop(node)
            out_file.unlink(missing_ok=True)

    def run(self) -> dict:
        self.selected = self.args.only.split(",") if self.args.only else SCENARIOS
        started = time.monotonic()
        for name in ("idle", "fanout", "storm", "heap", "settings"):
            if name == "fanout" and not ({"fanout", "crossnode", "profile"} & set(self.selected)):
                continue
            if name != "fanout" and name not in self.selected:
                continue
            log(f"scenario {name}")
            t0 = time.monotonic()
            getattr(self, name)()
            self.results["scenario_secs"][name] = time.monotonic() - t0
        self.results["total_secs"] = time.monotonic() - started
        if os.environ.get("BENCH_STARTED"):
            self.results["wall_secs_with_setup"] = time.time() - float(os.environ["BENCH_STARTED"])
        self.results["machine"]["loadavg_at_end"] = os.getloadavg()
        return self.results


def dhat_summary(d: dict, connections: int, top: int = 12) -> dict:
    """Bytes per connection of the largest allocation sites at the heap's peak."""
    frames = d["ftbl"]
    noise = ("library/alloc", "library/core", "library/std", "vgpreload", "unix.rs:", "[root]",
             "__rdl_alloc")
    sites = []
    for pp in sorted(d["pps"], key=lambda p: -p.get("gb", 0))[:top]:
        stack = [frames[i].split(": ", 1)[-1] for i in pp["fs"]]
        stack = [f.replace("UnknownInlinedFun ", "") for f in stack if not any(x in f for x in noise)]
        sites.append({"bytes_per_connection": pp.get("gb", 0) / connections,
                      "blocks_per_connection": pp.get("gbk", 0) / connections,
                      "stack": [f[:160] for f in stack[:5]]})
    total = sum(p.get("gb", 0) for p in d["pps"])
    return {"connections": connections, "heap_bytes_at_peak": total,
            "heap_bytes_per_connection": total / connections, "sites": sites}


def git_describe() -> str:
    """The commit measured, with `-dirty` when the work tree has changes."""
    try:
        out = subprocess.run(["git", "-C", str(systems.ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def slim_run(r: dict) -> dict:
    """A sio-load report without what the summary does not use."""
    keep = ("label", "transport", "clients", "room_size", "connected", "connect_failed",
            "connect_secs", "first_error", "max_passing_deliveries_per_sec", "steps", "workers")
    return {k: r.get(k) for k in keep}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts, one repetition (a smoke run)")
    ap.add_argument("--only", help=f"comma-separated scenarios among {','.join(SCENARIOS)}")
    ap.add_argument("--out", default=str(systems.ROOT / "bench" / "results"), help="results folder")
    ap.add_argument("--date", default=dt.date.today().isoformat(), help="name of the results")
    args = ap.parse_args()
    if not LOAD.exists():
        print(f"{LOAD} is missing: cargo build --release --workspace --bins", file=sys.stderr)
        return 2
    bench = Bench(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        results = bench.run()
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        bench.procs.stop_all()
        return 130
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        bench.procs.stop_all()
        return 1
    finally:
        bench.procs.stop_all()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{args.date}.json"
    json_path.write_text(json.dumps(results, indent=1))
    log(f"wrote {json_path}")
    try:
        import report
        md = report.write(results, out, args.date)
        log(f"wrote {md} and charts in {out / args.date}")
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
