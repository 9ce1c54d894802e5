"""Markdown report and PNG charts from the JSON that bench.py writes.

    python3 bench/report.py bench/results/<date>.json   # rewrites <date>.md and the charts
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

BASE = "node-haproxy"  # the main baseline: Node Socket.IO behind HAProxy
TARGETS = {  # from issue 6, measured there with a minimal generator, 1 room of 1,000
    "node_rate": 50_000, "node_kb": 17.0, "sioxide_rate": 400_000, "sioxide_kb": 28.6,
    "sioxide_haproxy_rate": 25_000, "cluster_rate": 200_000, "node_budget_kb": 8.0,
    "haproxy_session_kb": 4.9,
}
COLORS = {"node-haproxy": "#d62728", "node-nginx": "#ff7f0e", "socketioxide": "#1f77b4",
          "sioxide-sioproxy": "#17becf", "sioxide-haproxy": "#9467bd", "sio-cluster": "#2ca02c",
          "sio-cluster-1t": "#8c564b", "sio-redis2": "#2ca02c", "sxr2": "#1f77b4"}


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def kb(b):
    return None if b is None else b / 1024


def fmt(v, unit="", digits=1):
    if v is None:
        return "n/a"
    if abs(v) >= 10_000:
        return f"{v:,.0f}{unit}"
    return f"{v:.{digits}f}{unit}"


def ratio(a, b, digits=2):
    if a is None or not b:
        return "n/a"
    return f"{a / b:.{digits}f}x"


# --- fan-out helpers -------------------------------------------------------------------------

def fanout_entry(results, transport, room_size):
    for e in results.get("fanout", []):
        if e["transport"] == transport and e["room_size"] == room_size:
            return e
    return None


def max_rate(runs):
    return med([r["max_passing_deliveries_per_sec"] for r in runs]) if runs else None


def topped(runs, ladder_rates):
    """Whether a majority passed the ladder's last rate (the real maximum is higher)."""
    rows = ladder(runs, ladder_rates)
    return bool(rows) and rows[-1]["target"] == ladder_rates[-1] and rows[-1]["passed"] * 2 > rows[-1]["reps"]


def fmt_rate(runs, ladder_rates, unit=""):
    rate = max_rate(runs)
    return ("≥ " if topped(runs, ladder_rates) else "") + fmt(rate, unit)


def rate_spread(runs):
    vals = [r["max_passing_deliveries_per_sec"] for r in runs]
    return (min(vals), max(vals)) if vals else (None, None)


def ladder(runs, ladder_rates):
    """Median of every field per ladder rate over the repetitions that ran it."""
    rows = []
    for rate in ladder_rates:
        steps = [st for r in runs for st in r["steps"] if st["target_deliveries_per_sec"] == rate]
        if not steps:
            continue
        rows.append({
            "target": rate, "runs": len(steps), "reps": len(runs),
            "passed": sum(st["pass"] for st in steps),
            "delivered": med([st["deliveries_per_sec"] for st in steps]),
            "p50": med([st["latency"]["p50_ms"] for st in steps]),
            "p99": med([st["latency"]["p99_ms"] for st in steps]),
            "p999": med([st["latency"]["p999_ms"] for st in steps]),
            "cpu": med([st["cpu_secs_per_1000_deliveries"] for st in steps]),
            "lost": med([st["lost"] for st in steps]),
            "reasons": sorted({st["fail_reason"] for st in steps if st["fail_reason"]}),
        })
    return rows


def at_best(runs, ladder_rates):
    """The row of the highest rate a majority of all repetitions passed."""
    best = None
    for row in ladder(runs, ladder_rates):
        if row["passed"] * 2 > row["reps"]:
            best = row
    return best


def common_row(runs_a, runs_b, ladder_rates):
    """Rows of a and b at the highest rate both passed (majority)."""
    rows_a = {r["target"]: r for r in ladder(runs_a, ladder_rates) if r["passed"] * 2 > r["reps"]}
    rows_b = {r["target"]: r for r in ladder(runs_b, ladder_rates) if r["passed"] * 2 > r["reps"]}
    both = sorted(set(rows_a) & set(rows_b))
    if not both:
        return None, None
    return rows_a[both[-1]], rows_b[both[-1]]


# --- idle helpers ------------------------------------------------------------------------------

def idle_point(results, system, transport, connections=None):
    for e in results.get("idle", []):
        if e["system"] == system and e["transport"] == transport and e["points"]:
            pts = e["points"]
            if connections is None:
                return pts[-1]
            for p in pts:
                if p["connections"] == connections:
                    return p
    return None


def summary(results):
    """The headline figures, also stored in the JSON."""
    s = {}
    ws = fanout_entry(results, "websocket", 1000)
    runs = (ws or {}).get("runs", {})
    rates = (ws or {}).get("ladder", [])
    for key in runs:
        s[f"fanout_ws_1x1000_{key}"] = max_rate(runs[key])
        row = at_best(runs[key], rates)
        s[f"fanout_ws_1x1000_{key}_p99_ms"] = row["p99"] if row else None
    for key in ("node-haproxy", "node-nginx", "socketioxide", "sio-cluster"):
        p = idle_point(results, key, "websocket")
        if p:
            s[f"idle_ws_{key}_node_kb"] = kb(p["node_delta_per_connection"])
            s[f"idle_ws_{key}_proxy_kb"] = kb(p["proxy_delta_per_connection"])
            s[f"idle_ws_{key}_total_kb"] = kb(p["delta_per_connection"])
    return s


# --- issues 12 and 14: helpers over runs with per-pid CPU ----------------------------------------

def pid_cpu(step, pids):
    """CPU seconds of `pids` (with their children) during a step."""
    by = step.get("cpu_secs_by_pid") or {}
    return sum(by.get(str(p), 0.0) for p in pids)


def us_per(step, run, role):
    """µs of CPU of the run's `role` processes (node, proxy, other) per delivery."""
    got = step.get("received") or 0
    pids = (run.get("pids") or {}).get(role) or []
    if not got or not pids:
        return None
    return pid_cpu(step, pids) / got * 1e6


def rows_by_rate(runs, rates):
    """Per rate: medians over the repetitions of latency, delivered rate and CPU by role."""
    rows = []
    for rate in rates:
        pairs = [(st, r) for r in runs for st in r["steps"] if st["target_deliveries_per_sec"] == rate]
        if not pairs:
            continue
        rows.append({
            "target": rate, "runs": len(pairs), "reps": len(runs),
            "passed": sum(st["pass"] for st, _ in pairs),
            "delivered": med([st["deliveries_per_sec"] for st, _ in pairs]),
            "p50": med([st["latency"]["p50_ms"] for st, _ in pairs]),
            "p99": med([st["latency"]["p99_ms"] for st, _ in pairs]),
            "node_us": med([us_per(st, r, "node") for st, r in pairs]),
            "proxy_us": med([us_per(st, r, "proxy") for st, r in pairs]),
            "other_us": med([us_per(st, r, "other") for st, r in pairs]),
            "reasons": sorted({st["fail_reason"] for st, _ in pairs if st["fail_reason"]}),
        })
    return rows


def best_row(rows):
    best = None
    for row in rows:
        if row["passed"] * 2 > row["reps"]:
            best = row
    return best


def stat_sum(maps, name_prefixes, contains=None):
    """Sum, over every node, of the samples whose name starts with one of `name_prefixes`
    (and whose key contains `contains`)."""
    total, seen = 0.0, False
    for m in (maps or {}).values():
        for k, v in m.items():
            if any(k.startswith(p) for p in name_prefixes) and (contains is None or contains in k):
                total += v
                seen = True
    return total if seen else None


RECEIVED = ("sio_adapter_messages_received_total", "bench_adapter_messages_received_total")
PUBLISHED = ("sio_adapter_messages_published_total", "bench_adapter_messages_published_total")


def scale_figures(run):
    """The measured (last) step of a scale-out run, summarised."""
    if not run.get("steps"):
        return None
    st = run["steps"][-1]
    got = st.get("received") or 0
    pids = run.get("pids") or {}
    per_1k = lambda role: pid_cpu(st, pids.get(role) or []) / got * 1000 if got else None  # noqa: E731
    received = stat_sum(st.get("stats"), RECEIVED)
    published = stat_sum(st.get("stats"), PUBLISHED)
    useful = stat_sum(st.get("stats"), ("sio_adapter_",), "useful")
    wasted = stat_sum(st.get("stats"), ("sio_adapter_",), "wasted")
    subs = [v for m in (st.get("stats_after") or {}).values() for k, v in m.items()
            if "subscriptions" in k and "_total" not in k]
    conns = []
    for m in (st.get("stats_after") or {}).values():
        c = sum(v for k, v in m.items() if k.startswith("sio_connections") or k.startswith("bench_connections"))
        conns.append(c)
    return {
        "n": run["n"], "kind": run["kind"], "pass": st["pass"], "fail_reason": st["fail_reason"],
        "delivered": st["deliveries_per_sec"], "lost": st["lost"], "p50": st["latency"]["p50_ms"],
        "p99": st["latency"]["p99_ms"], "node_cpu_per_1k": per_1k("node"),
        "proxy_cpu_per_1k": per_1k("proxy"), "redis_cpu_per_1k": per_1k("other"),
        "messages_per_publish": received / published if received is not None and published else None,
        "received": received, "published": published,
        "useful_per_publish": useful / published if useful is not None and published else None,
        "wasted_per_publish": wasted / published if wasted is not None and published else None,
        "subscriptions": sum(subs) if subs else None,
        "connections_per_node": (min(conns), max(conns)) if conns else None,
        "rooms_per_node": sorted((run.get("placement") or {}).get("rooms_per_node", {}).values()),
        "notes": run.get("notes") or [],
    }


def scale_table(results):
    so = results.get("scaleout") or {}
    return [f for f in (scale_figures(r) for r in so.get("runs", [])) if f]


def scale_ratio(figs, kind):
    by_n = {f["n"]: f["node_cpu_per_1k"] for f in figs if f["kind"] == kind and f["node_cpu_per_1k"]}
    if not by_n:
        return None, None, None
    lo, hi = min(by_n), max(by_n)
    return (by_n[hi] / by_n[lo] if hi != lo else None), lo, hi


def proxy_polling_max(results, key):
    p = (results.get("proxy") or {}).get("polling") or {}
    runs = (p.get("runs") or {}).get(key) or []
    return max_rate(runs)


def idle_polling(results, key):
    for e in (results.get("proxy") or {}).get("idle_polling", []):
        if e["path"] == key:
            return e
    return None


def proxy_ws_rows(results, room_size):
    for e in (results.get("proxy") or {}).get("ws", []):
        if e["room_size"] == room_size:
            return {k: rows_by_rate(rs, e["rates"]) for k, rs in e["runs"].items()}, e
    return {}, None


def target_row(add, name, value, goal, better="higher", shown=None, failed=None):
    """A target, its figure and whether it is met; `failed` names a failed step the figure
    comes from (then it is shown but not judged)."""
    if value is None:
        add(f"| {name} | n/a | n/a |")
        return
    ok = value >= goal if better == "higher" else value <= goal
    verdict = f"not judged: {failed}" if failed else ("yes" if ok else "no")
    add(f"| {name} | {shown or fmt(value, '', 2)} | {verdict} |")


def failed_rows(**rows):
    """Which of these ladder rows (by path) failed in most repetitions, as text; None if none."""
    bad = [f"{k} {'; '.join(r['reasons'])[:60]}" for k, r in rows.items()
           if r and r["passed"] * 2 <= r["runs"]]
    return "; ".join(bad) or None


def issue_targets(results, add):
    """The targets of issues 12 and 14, each with the figure measured in this run."""
    add("## Targets (issues 12 and 14)")
    add("")
    add("| target | measured here | met? |")
    add("|---|---|---|")
    r2 = results.get("redis2") or {}
    a, b = (r2.get("runs") or {}).get("sio-redis2", []), (r2.get("runs") or {}).get("sxr2", [])
    ra, rb = max_rate(a), max_rate(b)
    target_row(add, "issue 12: sio-node x2 on Redis >= 0.8x bare socketioxide-redis x2 (max fan-out at p99 <= 50 ms, servers on one core)",
               ra / rb if ra is not None and rb else None, 0.8,
               shown=f"{ratio(ra, rb)} ({fmt(ra)}/s vs {fmt(rb)}/s)" if ra is not None and rb else None)
    figs = scale_table(results)
    q, lo, hi = scale_ratio(figs, "rooms")
    bad = "; ".join(f"N={f['n']} {str(f['fail_reason'])[:60]}" for f in figs
                    if f["kind"] == "rooms" and f["n"] in (lo, hi) and not f["pass"]) or None
    target_row(add, f"issue 12: --adapter-routing rooms, node CPU per 1,000 deliveries at {hi or 12} nodes <= 1.25x that at {lo or 3}",
               q, 1.25, better="lower", failed=bad)
    rows, _ = proxy_ws_rows(results, 1000)
    for rate in (10_000, 50_000):
        sp = next((x for x in rows.get("proxy-sioproxy", []) if x["target"] == rate), None)
        hp = next((x for x in rows.get("proxy-haproxy", []) if x["target"] == rate), None)
        d = next((x for x in rows.get("proxy-direct", []) if x["target"] == rate), None)
        q = sp["proxy_us"] / hp["proxy_us"] if sp and hp and sp["proxy_us"] and hp["proxy_us"] else None
        target_row(add, f"issue 14: sio-proxy CPU per delivered frame <= 0.5x HAProxy's, {rate // 1000} messages/s to 1,000 WebSocket clients",
                   q, 0.5, better="lower",
                   shown=f"{q:.2f}x ({sp['proxy_us']:.2f} vs {hp['proxy_us']:.2f} µs)" if q is not None else None,
                   failed=failed_rows(**{"sio-proxy": sp, "HAProxy": hp}))
        added = sp["p50"] - d["p50"] if sp and d and sp["p50"] is not None and d["p50"] is not None else None
        target_row(add, f"issue 14: sio-proxy adds <= 1 ms to p50 at {rate // 1000} messages/s", added, 1.0,
                   better="lower", shown=f"{added:+.2f} ms" if added is not None else None,
                   failed=failed_rows(**{"sio-proxy": sp, "direct": d}))
    e = fanout_entry(results, "websocket", 10)
    if e:
        cl = max_rate(e["runs"].get("sio-cluster", []))
        for base in ("node-nginx", "node-haproxy"):
            bm = max_rate(e["runs"].get(base, []))
            target_row(add, f"issue 14: rooms of 10 ({e['shape']}), sio-cluster >= 2x {results.get('labels', {}).get(base, base)}",
                       cl / bm if cl is not None and bm else None, 2.0,
                       shown=f"{ratio(cl, bm)} ({fmt(cl)}/s vs {fmt(bm)}/s)" if cl is not None and bm else None)
    sp, hp, d = (proxy_polling_max(results, k) for k in ("proxy-sioproxy", "proxy-haproxy", "proxy-direct"))
    target_row(add, "issue 14: polling fan-out (1x1000) through sio-proxy >= 2x HAProxy's",
               sp / hp if sp is not None and hp else None, 2.0,
               shown=f"{ratio(sp, hp)} ({fmt(sp)}/s vs {fmt(hp)}/s)" if sp is not None and hp else None)
    target_row(add, "issue 14: polling fan-out through sio-proxy >= 0.5x direct",
               sp / d if sp is not None and d else None, 0.5,
               shown=f"{ratio(sp, d)} ({fmt(sp)}/s vs {fmt(d)}/s)" if sp is not None and d else None)
    isp, ihp = idle_polling(results, "proxy-sioproxy"), idle_polling(results, "proxy-haproxy")
    a = kb(isp["proxy_gained_per_session"]) if isp else None
    b = kb(ihp["proxy_gained_per_session"]) if ihp else None
    target_row(add, "issue 14: sio-proxy memory per idle polling session <= HAProxy's (KB)",
               a / b if a is not None and b else None, 1.0, better="lower",
               shown=f"{fmt(a)} vs {fmt(b)} KB" if a is not None and b else None)
    add("")


def redis2_section(results, add, charts):
    r2 = results.get("redis2")
    if not r2:
        return
    labels = results.get("labels", {})
    add("## Two nodes on Redis: sio-node against bare socketioxide-redis (issue 12)")
    add("")
    cpus = r2.get("servers_cpus")
    add("1 room of 1,000 WebSocket clients connected to the two nodes directly (alternately), one "
        "sender on the first node, rates rising until p99 > 50 ms or any loss. "
        + (f"The nodes and Redis run on CPU {cpus}, the load generator on CPU {r2.get('generator_cpus')} "
           "(taskset): the servers share one core. " if cpus else "Not pinned (one CPU only). ")
        + f"{r2.get('reps')} repetition(s), alternating the order. CPU: µs of CPU per delivery.")
    add("")
    first = r2["ladder"][0] if r2.get("ladder") else None
    add(f"| system | max deliveries/s (spread) | p50 / p99 ms at that rate | nodes / Redis µs per delivery at that rate | nodes / Redis µs per delivery at {fmt(first)}/s | first failure |")
    add("|---|---|---|---|---|---|")
    rows = {}
    for key, rs in r2["runs"].items():
        if not rs:
            add(f"| {labels.get(key, key)} | no run | | | | |")
            continue
        rows[key] = rows_by_rate(rs, r2["ladder"])
        best = best_row(rows[key])
        low = next((r for r in rows[key] if r["target"] == first), None)
        lo, hi = rate_spread(rs)
        fails = [r for r in rows[key] if r["passed"] * 2 <= r["runs"]]
        why = f"{fmt(fails[0]['target'])}/s: {'; '.join(fails[0]['reasons'])[:90]}" if fails else "none"
        m = max_rate(rs)
        shown = f"{fmt(m)} ({fmt(lo)}-{fmt(hi)})" if m else f"< {fmt(first)} (none passed)"
        add(f"| {labels.get(key, key)} | {shown} | "
            + (f"{fmt(best['p50'], '', 2)} / {fmt(best['p99'], '', 2)} | {fmt(best['node_us'], '', 2)} / "
               f"{fmt(best['other_us'], '', 2)} |" if best else "n/a | n/a |")
            + (f" {fmt(low['node_us'], '', 2)} / {fmt(low['other_us'], '', 2)} |" if low else " n/a |")
            + f" {why} |")
    add("")
    a, b = r2["runs"].get("sio-redis2", []), r2["runs"].get("sxr2", [])
    if a and b:
        ra, rb = max_rate(a), max_rate(b)
        ok_a = {r["target"]: r for r in rows.get("sio-redis2", []) if r["passed"] * 2 > r["reps"]}
        ok_b = {r["target"]: r for r in rows.get("sxr2", []) if r["passed"] * 2 > r["reps"]}
        both = sorted(set(ok_a) & set(ok_b))
        add(f"sio-node x2 reaches **{ratio(ra, rb)}** of bare socketioxide-redis x2 (target >= 0.80x).")
        if both:
            t = both[-1]
            add(f" At {fmt(t)}/s, the highest rate both passed, the nodes spend {fmt(ok_a[t]['node_us'], '', 2)} µs "
                f"(sio-node) and {fmt(ok_b[t]['node_us'], '', 2)} µs (socketioxide-redis) of CPU per delivery: "
                f"{ratio(ok_a[t]['node_us'], ok_b[t]['node_us'])}.")
        add("")


def scaleout_section(results, add, charts):
    so = results.get("scaleout")
    if not so:
        return
    labels = results.get("labels", {})
    add("## Scale-out: N nodes, rooms on one node each (issue 12)")
    add("")
    add(f"{so['clients']:,} WebSocket clients in {so['rooms']} rooms of {so['room_size']} behind the "
        "proxy (sio-proxy with `--balance ip-hash` for sio-cluster, nginx `hash $remote_addr "
        "consistent` for Node Socket.IO with `@socket.io/redis-adapter` 8.3 `createShardedAdapter`, "
        "`subscriptionMode: \"dynamic\"`). Every member of a room connects from the same loopback "
        "address, chosen by probing handshakes through the proxy so that the rooms spread evenly over "
        f"the nodes (the *rooms per node* column). A fixed {so['messages_per_sec']:,} room messages/s "
        f"({so['deliveries_per_sec']:,} deliveries/s) for {so['step']} after a warm-up step at the same "
        "rate. *Node CPU* is the CPU seconds of all node processes per 1,000 deliveries; *Redis "
        "messages per publish* is what the nodes received from Redis (their adapter counters: "
        "`sio_adapter_messages_received_total`, or the Node baseline's wrapped Redis client) divided "
        "by what they published; *useful / wasted* splits what sio-nodes handled by whether a local "
        "socket was concerned (`sio_adapter_messages_handled_total`, where a node's own message coming "
        "back counts as wasted: with every room on its sender's node, the ideal is 0 useful and at most "
        "1 wasted per publish).")
    add("")
    figs = scale_table(results)
    base = {}
    for f in figs:
        if f["n"] == min(so["nodes"]):
            base[f["kind"]] = f["node_cpu_per_1k"]
    add("| system | N | node CPU s per 1k deliveries | vs N=%d | Redis messages per publish | useful / wasted per publish | p50 / p99 ms | proxy / Redis CPU s per 1k | rooms per node | connections per node | channels held (all nodes) | result |" % min(so["nodes"]))
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in sorted(figs, key=lambda f: (SCALE_ORDER.index(f["kind"]) if f["kind"] in SCALE_ORDER else 9, f["n"])):
        key = f"scale-{f['kind']}"
        rp = f["rooms_per_node"]
        cp = f["connections_per_node"]
        wasted = ("n/a" if f["wasted_per_publish"] is None else
                  f"{fmt(f['useful_per_publish'], '', 2)} / {fmt(f['wasted_per_publish'], '', 2)}")
        add(f"| {labels.get(key, key)} | {f['n']} | {fmt(f['node_cpu_per_1k'], '', 4)} | "
            f"{ratio(f['node_cpu_per_1k'], base.get(f['kind']))} | {fmt(f['messages_per_publish'], '', 2)} | "
            f"{wasted} | "
            f"{fmt(f['p50'], '', 2)} / {fmt(f['p99'], '', 2)} | {fmt(f['proxy_cpu_per_1k'], '', 4)} / "
            f"{fmt(f['redis_cpu_per_1k'], '', 4)} | {f'{rp[0]}-{rp[-1]}' if rp else 'n/a'} | "
            f"{f'{cp[0]:.0f}-{cp[1]:.0f}' if cp else 'n/a'} | {fmt(f['subscriptions'], '', 0)} | "
            f"{'pass' if f['pass'] else 'fail: ' + str(f['fail_reason'])[:60]} |")
    add("")
    for kind in SCALE_ORDER:
        q, lo, hi = scale_ratio(figs, kind)
        if q is not None:
            key = f"scale-{kind}"
            goal = " (target <= 1.25x)" if kind == "rooms" else ""
            add(f"- {labels.get(key, key)}: node CPU per 1,000 deliveries at {hi} nodes is **{q:.2f}x** that at {lo}{goal}.")
    notes = sorted({n for f in figs for n in f["notes"]})
    for n in notes:
        add(f"- Note: {n}.")
    for sk in so.get("skipped", []):
        add(f"- Not measured: {sk['kind']} at N={sk['n']}: {sk['why']}.")
    add("")
    if "scaleout" in charts:
        add(f"![scale-out]({charts['scaleout']})")
        add("")


def proxy_section(results, add, charts):
    px = results.get("proxy")
    if not px:
        return
    labels = results.get("labels", {})
    add("## The proxy's own cost: sio-proxy against HAProxy (issue 14)")
    add("")
    cpus = px.get("servers_cpus")
    add("One sio-node (no Redis) served three ways: directly, through sio-proxy and through HAProxy "
        "2.6, the proxies in front of the same node process. "
        + (f"Node and proxies run on CPU {cpus}, the load generator on CPU {px.get('generator_cpus')} "
           "(taskset). " if cpus else "Not pinned (one CPU only). ")
        + "*Proxy µs per frame* is the proxy process's CPU per delivered frame; *added* is the "
        "latency over the node served directly at the same rate. Rates are deliveries/s: 10k, 50k "
        "and 200k are 10, 50 and 200 messages/s per room, so every connection receives 10, 50 and "
        "200 frames/s in both shapes.")
    add("")
    for e in px.get("ws", []):
        rows = {k: rows_by_rate(rs, e["rates"]) for k, rs in e["runs"].items()}
        shape = f"{e['clients'] // e['room_size']} room(s) of {e['room_size']:,}"
        add(f"### WebSocket, {shape} ({e['clients']:,} clients, {e['reps']} repetition(s))")
        add("")
        add("| path | deliveries/s asked | delivered/s | p50 / p99 ms | added p50 / p99 ms | proxy µs per frame | node µs per frame | result |")
        add("|---|---|---|---|---|---|---|---|")
        direct = {r["target"]: r for r in rows.get("proxy-direct", [])}
        for key in PROXY_ORDER:
            for r in rows.get(key, []):
                d = direct.get(r["target"])
                added = (f"{r['p50'] - d['p50']:+.2f} / {r['p99'] - d['p99']:+.2f}"
                         if d and key != "proxy-direct" else "")
                ok = "pass" if r["passed"] * 2 > r["runs"] else "fail: " + "; ".join(r["reasons"])[:60]
                add(f"| {labels.get(key, key)} | {fmt(r['target'])} | {fmt(r['delivered'])} | "
                    f"{fmt(r['p50'], '', 2)} / {fmt(r['p99'], '', 2)} | {added} | "
                    f"{fmt(r['proxy_us'], '', 2) if key != 'proxy-direct' else ''} | {fmt(r['node_us'], '', 2)} | {ok} |")
        add("")
    if "proxy" in charts:
        add(f"![proxy cost]({charts['proxy']})")
        add("")
    p = px.get("polling")
    if p:
        add("### Polling fan-out, 1 room of 1,000 polling clients")
        add("")
        add("| path | max deliveries/s | vs direct | vs HAProxy | p50 / p99 ms at that rate | proxy µs per delivery | first failure |")
        add("|---|---|---|---|---|---|---|")
        d, h = proxy_polling_max(results, "proxy-direct"), proxy_polling_max(results, "proxy-haproxy")
        for key in PROXY_ORDER:
            rs = p["runs"].get(key) or []
            if not rs:
                add(f"| {labels.get(key, key)} | no run | | | | | |")
                continue
            rows = rows_by_rate(rs, p["ladder"])
            best = best_row(rows)
            fails = [r for r in rows if r["passed"] * 2 <= r["runs"]]
            why = f"{fmt(fails[0]['target'])}/s: {'; '.join(fails[0]['reasons'])[:80]}" if fails else "none"
            m = max_rate(rs)
            add(f"| {labels.get(key, key)} | {fmt(m) if m else '< ' + fmt(p['ladder'][0])} | {ratio(m, d)} | "
                f"{ratio(m, h)} | " + (f"{fmt(best['p50'], '', 2)} / {fmt(best['p99'], '', 2)} | "
                                      f"{fmt(best['proxy_us'], '', 2) if key != 'proxy-direct' else ''} |"
                                      if best else "n/a | n/a |") + f" {why} |")
        add("")
    idle = px.get("idle_polling")
    if idle:
        add("### Idle polling sessions: memory in the proxy")
        add("")
        add("| proxy | sessions | proxy RSS (MiB) | KB per session gained | KB per session (marginal) |")
        add("|---|---|---|---|---|")
        for e in idle:
            last = e["points"][-1]
            add(f"| {labels.get(e['path'], e['path'])} | {last['connected']:,} | {last['proxy_rss_bytes'] / 1048576:.1f} | "
                f"{fmt(kb(e['proxy_gained_per_session']))} | {fmt(kb(e['proxy_marginal_per_session']))} |")
        add("")


SCALE_ORDER = ["rooms", "broadcast", "node"]
PROXY_ORDER = ["proxy-direct", "proxy-sioproxy", "proxy-haproxy"]


def write(results, out: Path, date: str) -> Path:
    charts = out / date
    charts.mkdir(parents=True, exist_ok=True)
    made = make_charts(results, charts)
    results["summary"] = summary(results)
    (out / f"{date}.json").write_text(json.dumps(results, indent=1))
    md = out / f"{date}.md"
    md.write_text(markdown(results, date, made))
    return md


# --- markdown ----------------------------------------------------------------------------------

def markdown(results, date, charts) -> str:
    L = []
    add = L.append
    labels = results.get("labels", {})
    lab = lambda k: labels.get(k, k)  # noqa: E731
    add(f"# sio-cluster benchmark, {date}")
    add("")
    m = results.get("machine", {})
    add(f"Measured by `make bench` in one run on this machine ({m.get('cpus')} cores, Linux "
        f"{m.get('kernel')}), every system started by the benchmark itself on loopback, release "
        f"builds, the same payloads and Engine.IO ping settings "
        f"({results['settings']['ping_interval_ms']} ms / {results['settings']['ping_timeout_ms']} ms) "
        f"for all, commit `{results.get('commit', 'unknown')}`. Load generator: `sio-load` (tests/src/bin/sio-load), raw Engine.IO v4 / "
        f"Socket.IO v5, open-loop rate, HDR histograms. Whole run: "
        f"{fmt(results.get('total_secs', 0) / 60, ' min')}"
        + (f" ({fmt(results['wall_secs_with_setup'] / 60, ' min')} with installs and the release build)"
           if results.get("wall_secs_with_setup") else "") + f". Load average at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_at_start', []))}, at end "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_at_end', []))}.")
    add("")
    add("**Noise.** Two cores are shared by the servers, the generator and whatever else runs on the "
        "machine: figures move by 10-30 % between runs. Systems alternate between repetitions and "
        "the tables give medians (with the spread of the maximum rate over repetitions). Loads are "
        "on loopback: no network cost, so proxies look cheaper and CPU-bound servers slower than "
        "on separate hosts.")
    add("")
    if results.get("settings", {}).get("quick"):
        add("> This is a `--quick` smoke run: small counts, one repetition. Not for quoting.")
        add("")

    ws = fanout_entry(results, "websocket", 1000) or {"runs": {}, "ladder": []}
    runs, rates = ws["runs"], ws["ladder"]
    node_rate = max_rate(runs.get("node-haproxy", []))
    nginx_rate = max_rate(runs.get("node-nginx", []))
    sx_rate = max_rate(runs.get("socketioxide", []))
    sp_rate = max_rate(runs.get("sioxide-sioproxy", []))
    sh_rate = max_rate(runs.get("sioxide-haproxy", []))
    cl_rate = max_rate(runs.get("sio-cluster", []))
    node_best = at_best(runs.get("node-haproxy", []), rates)
    cl_best = at_best(runs.get("sio-cluster", []), rates)
    idle_node = idle_point(results, "node-haproxy", "websocket")
    idle_nginx = idle_point(results, "node-nginx", "websocket")
    idle_sx = idle_point(results, "socketioxide", "websocket")
    idle_cl = idle_point(results, "sio-cluster", "websocket")
    nkb = lambda p: kb(p["node_delta_per_connection"]) if p else None  # noqa: E731
    pkb = lambda p: kb(p["proxy_delta_per_connection"]) if p else None  # noqa: E731

    add("## Targets (issue 6)")
    add("")
    add("Fan-out: WebSocket, 1 room of 1,000 clients, highest delivered rate with p99 <= 50 ms and no loss "
        "(median of the repetitions). Memory: RSS gained per idle WebSocket connection at "
        f"{IDLE_MAX(results)} connections.")
    add("")
    add("| target | measured here | met? |")
    add("|---|---|---|")

    def row(name, value, goal, better="higher", unit=""):
        if value is None:
            add(f"| {name} | n/a | n/a |")
            return
        ok = value >= goal if better == "higher" else value <= goal
        gap = "" if ok else f" (misses by {abs(value - goal) / goal * 100:.0f} %)"
        add(f"| {name} | {fmt(value, unit)} | {'yes' if ok else 'no'}{gap} |")

    add(f"| Node Socket.IO (issue: 50k deliveries/s, ~17 KB/conn; a reference, not ours) | "
        f"{fmt(node_rate, '/s')} (behind HAProxy), {fmt(nginx_rate, '/s')} (behind nginx); "
        f"{fmt(nkb(idle_node), ' KB')} per connection | reference |")
    add(f"| socketioxide (issue: 400k/s, ~28.6 KB/conn; a reference) | {fmt_rate(runs.get('socketioxide', []), rates, '/s')}; "
        f"{fmt(nkb(idle_sx), ' KB')} per connection | reference |")
    add(f"| socketioxide behind HAProxy (issue: 25k/s; a reference) | {fmt(sh_rate, '/s')} | reference |")
    row("sio-cluster via sio-proxy, 3 nodes on Redis: >= 200,000 deliveries/s at p99 <= 50 ms",
        cl_rate, TARGETS["cluster_rate"], unit="/s")
    row("a sio-node: <= 8 KB RSS per idle WebSocket connection (sio-cluster node, KB)",
        nkb(idle_cl), TARGETS["node_budget_kb"], better="lower")
    row("sio-node served directly: <= 8 KB per idle WebSocket connection (KB)", nkb(idle_sx),
        TARGETS["node_budget_kb"], better="lower")
    row("sio-proxy: no more memory per proxied session than HAProxy (KB, HAProxy measured "
        f"{fmt(pkb(idle_node))} KB)", pkb(idle_cl), pkb(idle_node) or TARGETS["haproxy_session_kb"],
        better="lower")
    add("")

    issue_targets(results, add)

    add("## Ratios at a glance")
    add("")
    add("| figure | sio-cluster | vs Node+HAProxy | vs Node+nginx | vs other |")
    add("|---|---|---|---|---|")
    add(f"| fan-out deliveries/s (ws, 1x1000) | {fmt(cl_rate)} | {ratio(cl_rate, node_rate)} | "
        f"{ratio(cl_rate, nginx_rate)} | {ratio(cl_rate, sx_rate)} of socketioxide direct |")
    if cl_best and node_best:
        add(f"| p99 at the highest passing rate (ms) | {fmt(cl_best['p99'])} at {fmt(cl_best['delivered'])}/s | "
            f"{fmt(node_best['p99'])} ms at {fmt(node_best['delivered'])}/s | | |")
        a, b = common_row(runs.get("sio-cluster", []), runs.get("node-haproxy", []), rates)
        if a and b:
            add(f"| p99 at the same rate, {fmt(a['target'])}/s (ms) | {fmt(a['p99'], '', 2)} | "
                f"{fmt(b['p99'], '', 2)} ({ratio(a['p99'], b['p99'])}) | | |")
    add(f"| node RSS per idle ws connection (KB) | {fmt(nkb(idle_cl))} | "
        f"{fmt(nkb(idle_node))} ({ratio(nkb(idle_cl), nkb(idle_node))}) | "
        f"{fmt(nkb(idle_nginx))} ({ratio(nkb(idle_cl), nkb(idle_nginx))}) | "
        f"{ratio(nkb(idle_cl), nkb(idle_sx))} of socketioxide direct ({fmt(nkb(idle_sx))}) |")
    add(f"| proxy RSS per idle ws connection (KB) | {fmt(pkb(idle_cl))} (sio-proxy) | "
        f"{fmt(pkb(idle_node))} HAProxy ({ratio(pkb(idle_cl), pkb(idle_node))}) | "
        f"{fmt(pkb(idle_nginx))} nginx ({ratio(pkb(idle_cl), pkb(idle_nginx))}) | |")
    add(f"| whole system RSS per idle ws connection (KB) | {fmt(kb(idle_cl['delta_per_connection']) if idle_cl else None)} | "
        f"{fmt(kb(idle_node['delta_per_connection']) if idle_node else None)} | "
        f"{fmt(kb(idle_nginx['delta_per_connection']) if idle_nginx else None)} | |")
    add("")
    add("Proxy overhead (one sio-node, WebSocket, 1 room of 1,000):")
    add("")
    add("| path | max deliveries/s | ratio to direct | p99 at the highest rate all three passed |")
    add("|---|---|---|---|")
    trio = [("socketioxide", sx_rate), ("sioxide-sioproxy", sp_rate), ("sioxide-haproxy", sh_rate)]
    common_rates = None
    for key, _ in trio:
        ok = {r["target"] for r in ladder(runs.get(key, []), rates) if r["passed"] * 2 > r["reps"]}
        common_rates = ok if common_rates is None else common_rates & ok
    common = max(common_rates) if common_rates else None
    p99_at = {}
    for key, rate in trio:
        r = next((x for x in ladder(runs.get(key, []), rates) if x["target"] == common), None)
        p99_at[key] = r["p99"] if r else None
        add(f"| {lab(key)} | {fmt_rate(runs.get(key, []), rates)} | {ratio(rate, sx_rate)} | "
            f"{fmt(p99_at[key], ' ms', 2)} at {fmt(common)}/s |")
    add("")
    if p99_at.get("sioxide-sioproxy") is not None and p99_at.get("socketioxide") is not None:
        add(f"sio-proxy keeps {ratio(sp_rate, sx_rate)} of direct throughput and adds "
            f"{p99_at['sioxide-sioproxy'] - p99_at['socketioxide']:+.2f} ms to p99 at {fmt(common)}/s; "
            f"HAProxy keeps {ratio(sh_rate, sx_rate)} and adds "
            f"{fmt((p99_at['sioxide-haproxy'] or 0) - p99_at['socketioxide'], ' ms', 2)}; sio-proxy "
            f"delivers {ratio(sp_rate, sh_rate)} of HAProxy's maximum.")
        add("")

    # Idle capacity
    add("## Idle capacity: memory per connection")
    add("")
    add("RSS of the node processes and the proxy (Redis not counted) with N idle clients connected "
        "(no rooms). *Per conn* is total RSS / N; *gained* is (RSS - RSS before the first client) / N, "
        "split into node(s) and proxy.")
    add("")
    for transport in ("websocket", "polling"):
        add(f"### {transport}")
        add("")
        add("| system | N | total RSS (MiB) | per conn (KB) | gained per conn (KB) | of which node(s) | of which proxy | vs Node+HAProxy |")
        add("|---|---|---|---|---|---|---|---|")
        for e in results.get("idle", []):
            if e["transport"] != transport:
                continue
            for p in e["points"]:
                base = idle_point(results, BASE, transport, p["connections"])
                add(f"| {lab(e['system'])} | {p['connected']:,} | {p['rss_bytes'] / 1048576:.1f} | "
                    f"{fmt(kb(p['rss_per_connection']))} | {fmt(kb(p['delta_per_connection']))} | "
                    f"{fmt(kb(p['node_delta_per_connection']))} | {fmt(kb(p['proxy_delta_per_connection']))} | "
                    f"{ratio(p['delta_per_connection'], base['delta_per_connection'] if base else None)} |")
        add("")
    add("Marginal cost (RSS slope between the smallest and the largest N, so fixed start-up costs "
        "such as a JIT or a first pool cancel out):")
    add("")
    add("| system | transport | node(s) KB per conn | proxy KB per conn |")
    add("|---|---|---|---|")
    for e in results.get("idle", []):
        pts = e["points"]
        if len(pts) < 2:
            continue
        a, b = pts[0], pts[-1]
        dn = max(b["connected"] - a["connected"], 1)
        node = (b["node_rss_bytes"] - a["node_rss_bytes"]) / dn
        proxy = (b["proxy_rss_bytes"] - a["proxy_rss_bytes"]) / dn if e["system"] != "socketioxide" else None
        add(f"| {lab(e['system'])} | {e['transport']} | {fmt(kb(node))} | {fmt(kb(proxy))} |")
    add("")
    if "memory" in charts:
        add(f"![memory per connection]({charts['memory']})")
        add("")

    if results.get("memory_settings"):
        add("## sio-node memory settings")
        add("")
        add("One sio-node served directly, WebSocket. *Marginal* is the RSS slope between the first "
            "and last connection count (what one more idle connection costs); the fan-out columns "
            "check that a setting keeps throughput (1 room of 1,000).")
        add("")
        add("| setting | marginal KB/conn | gained KB/conn at max N | fan-out: delivered/s and p99 |")
        add("|---|---|---|---|")
        for v in results["memory_settings"]:
            fan = "; ".join(
                f"{fmt(f['target'])}/s: " + (
                    f"{fmt(f['deliveries_per_sec'])}/s p99 {fmt(f['p99_ms'], ' ms')}"
                    f"{'' if f['pass'] else ' (fail: ' + str(f.get('fail_reason')) + ')'}" if f['deliveries_per_sec'] else
                    f"fail: {f.get('fail_reason') or 'nothing delivered'}")
                for f in v["fanout"])
            add(f"| {v['variant']} | {fmt(kb(v['marginal_per_connection']))} | "
                f"{fmt(kb(v['points'][-1]['delta_per_connection']))} | {fan} |")
        add("")
        if "settings" in charts:
            add(f"![memory settings]({charts['settings']})")
            add("")

    add("## Fan-out")
    add("")
    add("Each system gets the same 1,000 clients; the first member of every room sends "
        "`room-message` at an open-loop rate (send time in the text); every member, the sender "
        "included, receives it. Rates rise until p99 > 50 ms or any loss. Latency is send to "
        "receive across processes (wall clock). CPU is user+system seconds of every process of "
        "the system (nodes, proxy, Redis) per 1,000 deliveries, at the highest passing rate.")
    add("")
    for e in results.get("fanout", []):
        rooms, size = e["shape"].split("x")
        add(f"### {e['transport']}, {int(rooms):,} room(s) of {int(size):,} ({e['clients']:,} clients, "
            f"{e['reps']} repetition(s))")
        add("")
        common = None  # the lowest rate every system ran: CPU compared at the same load
        for rs in e["runs"].values():
            ran = {r["target"] for r in ladder(rs, e["ladder"])}
            common = ran if common is None else common & ran
        common = min(common) if common else None
        add(f"| system | max deliveries/s (spread) | vs Node+HAProxy | vs Node+nginx | p50 / p99 / p999 ms at that rate | "
            f"CPU s per 1k deliveries at that rate | CPU s per 1k at {fmt(common)}/s | first failure |")
        add("|---|---|---|---|---|---|---|---|")
        base = max_rate(e["runs"].get("node-haproxy", []))
        base2 = max_rate(e["runs"].get("node-nginx", []))
        for key, rs in e["runs"].items():
            if not rs:
                add(f"| {lab(key)} | no run | | | | | |")
                continue
            best = at_best(rs, e["ladder"])
            lo, hi = rate_spread(rs)
            fails = [r for r in ladder(rs, e["ladder"]) if r["passed"] * 2 <= r["runs"]]
            why = f"{fmt(fails[0]['target'])}/s: {'; '.join(fails[0]['reasons'])[:90]}" if fails else "none"
            mr = max_rate(rs)
            shown = f"{fmt_rate(rs, e['ladder'])} ({fmt(lo)}-{fmt(hi)})" if mr else f"< {fmt(e['ladder'][0])} (none passed)"
            if not best:  # none passed: show the lowest rate instead
                rows = ladder(rs, e["ladder"])
                best = dict(rows[0], p50=rows[0]["p50"]) if rows else None
                at = f" (at {fmt(best['target'])}/s)" if best else ""
            else:
                at = ""
            low = next((r for r in ladder(rs, e["ladder"]) if r["target"] == common), None)
            add(f"| {lab(key)} | {shown} | {ratio(mr, base)} | {ratio(mr, base2)} | "
                + (f"{fmt(best['p50'], '', 2)} / {fmt(best['p99'], '', 2)} / {fmt(best['p999'], '', 2)}{at} | "
                   f"{fmt(best['cpu'], '', 4)} |" if best else "n/a | n/a |")
                + f" {fmt(low['cpu'] if low else None, '', 4)} | {why} |")
        add("")
        if e["transport"] == "polling" and any(not max_rate(rs) for rs in e["runs"].values() if rs):
            add("On polling, every delivery ends a long-poll and the client must send a new GET before "
                "the next one, so one broadcast to a large room is as many HTTP responses and new "
                "requests. Where a system passed no rate, its row gives the latency at the lowest rate.")
            add("")
        chart = charts.get(f"fanout-{e['transport']}-{e['shape']}")
        if chart:
            add(f"![fan-out {e['transport']} {e['shape']}]({chart})")
            add("")

    redis2_section(results, add, charts)
    scaleout_section(results, add, charts)
    proxy_section(results, add, charts)

    cn = results.get("crossnode", {}).get("runs", {})
    if cn:
        add("## Cross-node broadcast through Redis")
        add("")
        add("Clients connect to the nodes directly (round robin over the nodes), one room spans every "
            "node, the sender is on the first node. *Same node* are the receivers on the sender's "
            "node, *other nodes* those reached through Redis.")
        add("")
        add("| system | rate | same node p50 / p99 ms | other nodes p50 / p99 ms | extra p50 / p99 ms |")
        add("|---|---|---|---|---|")
        for key, rs in cn.items():
            for rate in sorted({st["target_deliveries_per_sec"] for r in rs for st in r["steps"]}):
                steps = [st for r in rs for st in r["steps"] if st["target_deliveries_per_sec"] == rate]
                same = [st["same_node"] for st in steps if st.get("same_node")]
                other = [st["other_node"] for st in steps if st.get("other_node")]
                if not same or not other:
                    continue
                s50, s99 = med([x["p50_ms"] for x in same]), med([x["p99_ms"] for x in same])
                o50, o99 = med([x["p50_ms"] for x in other]), med([x["p99_ms"] for x in other])
                add(f"| {lab(key)} | {fmt(rate)}/s | {s50:.2f} / {s99:.2f} | {o50:.2f} / {o99:.2f} | "
                    f"{o50 - s50:+.2f} / {o99 - s99:+.2f} |")
        add("")

    if results.get("storm"):
        add("## Reconnect storm")
        add("")
        add("WebSocket clients connected through the proxy; the benchmark SIGKILLs the node holding "
            "the most connections and times until 99 % (and 100 %) of the clients are connected "
            "again. Clients reconnect like socket.io-client (1 s doubling to 5 s, +-50 % jitter), so "
            "about a second is the client's own back-off.")
        add("")
        add("| system | clients | sessions lost | lowest connected | 99 % back after | all back after |")
        add("|---|---|---|---|---|---|")
        for s in results["storm"]:
            add(f"| {lab(s['system'])} | {s.get('clients', 0):,} | {s.get('disconnected', 0):,} | "
                f"{s.get('min_connected', 0):,} | {fmt(s.get('secs_to_99_percent'), ' s', 2)} | "
                f"{fmt(s.get('secs_to_100_percent'), ' s', 2)} |")
        add("")

    prof = results.get("profile")
    if prof:
        add("## Where sio-cluster spends its CPU")
        add("")
        add(f"`perf record -F 499` (software clock: this machine has no hardware counters) over 4 s of "
            f"fan-out at {fmt(prof.get('rate'))} deliveries/s through sio-proxy, 3 nodes and Redis. "
            f"CPU seconds used in those 4 s (2 cores = 8 s available):")
        add("")
        for name, secs in (prof.get("cpu_secs_in_4s") or {}).items():
            add(f"- {name}: {secs:.2f} s")
        add("")
        if prof.get("top"):
            add("Top samples (object, symbol; >= 1 % of all samples):")
            add("")
            add("```")
            L.extend(prof["top"])
            add("```")
        elif prof.get("perf_error"):
            add(f"perf gave no samples: `{prof['perf_error'][:300]}`")
        add("")

    heap = results.get("heap")
    if heap:
        add("## Where an idle WebSocket connection's memory goes (sio-node)")
        add("")
        add(f"valgrind DHAT on one sio-node (release build, defaults) at its heap peak with "
            f"{heap['connections']:,} idle WebSocket clients: {fmt(kb(heap['heap_bytes_per_connection']))} KB "
            f"of heap per connection (RSS adds allocator overhead and fragmentation). Largest sites, "
            f"innermost frames first:")
        add("")
        add("| KB per conn | blocks per conn | allocated at |")
        add("|---|---|---|")
        for site in heap["sites"]:
            where = " <- ".join(f"`{f[:90]}`" for f in site["stack"][:3])
            add(f"| {site['bytes_per_connection'] / 1024:.2f} | {site['blocks_per_connection']:.1f} | {where} |")
        add("")

    if results.get("errors"):
        add("## Errors during the run")
        add("")
        for e in results["errors"]:
            add(f"- {e['where']}: `{e['error'][:300].replace(chr(10), ' ')}`")
        add("")
    add("## Reproduce")
    add("")
    add("`make bench` (installs HAProxy, nginx, the Node baseline's packages and matplotlib if missing, "
        "builds release binaries, runs everything, stops every process). Raw per-run reports of "
        "`sio-load` are in `target/bench/raw/`, logs in `target/bench/`.")
    add("")
    return "\n".join(L)


def IDLE_MAX(results):  # noqa: N802 - reads like a constant in the text
    ns = [p["connections"] for e in results.get("idle", []) for p in e["points"]]
    return f"{max(ns):,}" if ns else "n/a"


# --- charts ----------------------------------------------------------------------------------

def make_charts(results, charts: Path) -> dict:
    try:
        import matplotlib
        import matplotlib.ticker
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing: no charts", file=sys.stderr)
        return {}
    labels = results.get("labels", {})
    made = {}
    rel = charts.name

    for e in results.get("fanout", []):
        fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
        for key, rs in e["runs"].items():
            rows = ladder(rs, e["ladder"])
            if not rows:
                continue
            for ax, field in zip(axes, ("p50", "p99")):
                xs = [r["delivered"] / 1000 for r in rows]
                ys = [max(r[field], 0.01) for r in rows]
                ax.plot(xs, ys, "-", color=COLORS.get(key), label=labels.get(key, key), linewidth=1.8)
                ok = [(x, y) for x, y, r in zip(xs, ys, rows) if r["passed"] * 2 > r["runs"]]
                bad = [(x, y) for x, y, r in zip(xs, ys, rows) if r["passed"] * 2 <= r["runs"]]
                if ok:
                    ax.scatter(*zip(*ok), color=COLORS.get(key), s=22, zorder=3)
                if bad:
                    ax.scatter(*zip(*bad), facecolors="white", edgecolors=COLORS.get(key), s=40,
                               zorder=3, marker="X")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        for ax, field in zip(axes, ("p50", "p99")):
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.axhline(50, color="grey", linestyle="--", linewidth=1)
            ax.set_xlabel("deliveries per second (thousands)")
            ax.set_ylabel(f"{field} latency (ms, log)")
            rooms, size = e["shape"].split("x")
            ax.set_title(f"{field}: {e['transport']}, {rooms} room(s) of {size}")
            ax.grid(True, which="both", alpha=0.3)
        axes[1].text(0.99, 0.02, "dashed: 50 ms budget; X: failed step", transform=axes[1].transAxes,
                     fontsize=8, va="bottom", ha="right")
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.suptitle("Fan-out latency against delivered rate (median of repetitions)")
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        name = f"fanout-{e['transport']}-{e['shape']}.png"
        fig.savefig(charts / name, dpi=110)
        plt.close(fig)
        made[f"fanout-{e['transport']}-{e['shape']}"] = f"{rel}/{name}"

    idle = results.get("idle", [])
    if idle:
        fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
        for ax, transport in zip(axes, ("websocket", "polling")):
            entries = [e for e in idle if e["transport"] == transport]
            steps = sorted({p["connections"] for e in entries for p in e["points"]})
            width = 0.8 / max(len(steps), 1)
            for i, e in enumerate(entries):
                for j, p in enumerate(e["points"]):
                    x = i + (j - (len(steps) - 1) / 2) * width
                    node = kb(p["node_delta_per_connection"])
                    proxy = kb(p["proxy_delta_per_connection"] or 0)
                    ax.bar(x, node, width * 0.9, color=COLORS.get(e["system"]), alpha=0.35 + 0.65 * (j + 1) / len(steps))
                    ax.bar(x, proxy, width * 0.9, bottom=node, color="#555555", alpha=0.6)
                    ax.text(x, node + proxy + 0.3, f"{node + proxy:.1f}", ha="center", fontsize=7)
            ax.set_xticks(range(len(entries)))
            ax.set_xticklabels([labels.get(e["system"], e["system"]).replace(" (", "\n(").replace(" + ", "\n+ ")
                                for e in entries], fontsize=8)
            ax.set_title(f"{transport}: bars = {', '.join(f'{s:,}' for s in steps)} connections")
            ax.set_ylabel("RSS gained per idle connection (KB)")
            ax.axhline(8, color="green", linestyle="--", linewidth=1)
            ax.grid(True, axis="y", alpha=0.3)
        axes[0].text(0.01, 0.97, "colour: node process(es); grey on top: proxy; dashed: 8 KB node budget",
                     transform=axes[0].transAxes, fontsize=8, va="top")
        fig.suptitle("Memory per idle connection (nodes + proxy, Redis excluded)")
        fig.tight_layout()
        fig.savefig(charts / "memory-idle.png", dpi=110)
        plt.close(fig)
        made["memory"] = f"{rel}/memory-idle.png"

    figs = scale_table(results)
    if figs:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
        colors = {"rooms": "#2ca02c", "broadcast": "#9467bd", "node": "#d62728"}
        for kind in SCALE_ORDER:
            pts = sorted((f["n"], f["node_cpu_per_1k"], f["messages_per_publish"]) for f in figs
                         if f["kind"] == kind and f["node_cpu_per_1k"] is not None)
            if not pts:
                continue
            name = labels.get(f"scale-{kind}", kind)
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colors[kind], label=name)
            mp = [(p[0], p[2]) for p in pts if p[2] is not None]
            if mp:
                axes[1].plot(*zip(*mp), "o-", color=colors[kind], label=name)
        axes[0].set_ylabel("CPU s of all nodes per 1,000 deliveries")
        axes[0].set_title("CPU per delivery against nodes")
        axes[1].set_ylabel("Redis messages received by nodes per publish")
        axes[1].set_title("Messages each publish costs the nodes")
        for ax in axes:
            ax.set_xlabel("nodes (N)")
            ax.set_xticks(sorted({f["n"] for f in figs}))
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.suptitle("Scale-out: rooms of 4 on one node each, fixed message rate")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.savefig(charts / "scaleout.png", dpi=110)
        plt.close(fig)
        made["scaleout"] = f"{rel}/scaleout.png"

    ws = (results.get("proxy") or {}).get("ws") or []
    if ws:
        fig, axes = plt.subplots(1, len(ws), figsize=(6 * len(ws), 4.6), squeeze=False)
        colors = {"proxy-sioproxy": "#17becf", "proxy-haproxy": "#9467bd"}
        for ax, e in zip(axes[0], ws):
            rows = {k: rows_by_rate(rs, e["rates"]) for k, rs in e["runs"].items()}
            width = 0.38
            for j, key in enumerate(("proxy-sioproxy", "proxy-haproxy")):
                vals = [next((r["proxy_us"] for r in rows.get(key, []) if r["target"] == t), None) or 0
                        for t in e["rates"]]
                xs = [i + (j - 0.5) * width for i in range(len(e["rates"]))]
                ax.bar(xs, vals, width * 0.95, color=colors[key], label=labels.get(key, key))
                for x, v in zip(xs, vals):
                    ax.text(x, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(e["rates"])))
            ax.set_xticklabels([f"{t // 1000}k/s" for t in e["rates"]])
            ax.set_xlabel("deliveries per second")
            ax.set_ylabel("proxy CPU µs per delivered frame")
            ax.set_title(f"WebSocket, {e['clients'] // e['room_size']} room(s) of {e['room_size']}")
            ax.grid(True, axis="y", alpha=0.3)
        handles, names = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8, frameon=False)
        fig.suptitle("The proxy's CPU per delivered frame (same sio-node behind each)")
        fig.tight_layout(rect=(0, 0.08, 1, 1))
        fig.savefig(charts / "proxy-cpu.png", dpi=110)
        plt.close(fig)
        made["proxy"] = f"{rel}/proxy-cpu.png"

    settings = results.get("memory_settings", [])
    if settings:
        fig, ax = plt.subplots(figsize=(10, 0.55 * len(settings) + 1.6))
        names = [v["variant"] for v in settings][::-1]
        vals = [kb(v["marginal_per_connection"]) for v in settings][::-1]
        ax.barh(names, vals, color="#1f77b4")
        for y, (v, s) in enumerate(zip(vals, settings[::-1])):
            last = s["fanout"][-1] if s["fanout"] else None
            extra = f"  (p99 {last['p99_ms']:.1f} ms at {last['deliveries_per_sec'] / 1000:.0f}k/s)" if last else ""
            ax.text(v + 0.2, y, f"{v:.1f} KB{extra}", va="center", fontsize=8)
        ax.axvline(8, color="green", linestyle="--", linewidth=1)
        ax.set_xlabel("RSS per additional idle WebSocket connection (KB); dashed: 8 KB budget")
        ax.set_title("sio-node memory per connection by setting")
        ax.set_xlim(0, max(vals + [8]) * 1.6)
        ax.tick_params(axis="y", labelsize=8)
        fig.tight_layout()
        fig.savefig(charts / "memory-settings.png", dpi=110)
        plt.close(fig)
        made["settings"] = f"{rel}/memory-settings.png"
    return made


if __name__ == "__main__":
    path = Path(sys.argv[1])
    data = json.loads(path.read_text())
    print(write(data, path.parent, path.stem))
