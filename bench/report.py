#!/usr/bin/env python3
"""Turns bench/run's raw results into bench/RESULTS.md and bench/results.svg.

    report.py RESULTS.jsonl META.json OUT.md OUT.svg

Every figure is a median over the measured rounds, with min-max beside it.
Ratios are "protoserve (or a peer) divided by the code-generated tonic peer".
The SVG draws, per scenario, how each server compares with tonic with
"higher is better" throughout: throughput / tonic's throughput, tonic's
latency / latency, tonic's CPU per call / CPU per call.
"""

import json
import statistics
import sys
from collections import defaultdict

NAMES = {
    "protoserve": "protoserve (reply/echo handler)",
    "protoserve-nojournal": "protoserve (reply, --journal off)",
    "protoserve-lua": "protoserve (Lua script)",
    "protoserve-rg": "protoserve (Lua, repo handlers/)",
    "tonic": "tonic, code-generated",
    "python": "Python grpcio (sync)",
    "node": "Node @grpc/grpc-js",
}
COLORS = {
    "protoserve": "#1f77b4",
    "protoserve-nojournal": "#aec7e8",
    "protoserve-lua": "#17becf",
    "protoserve-rg": "#0d3d6b",
    "tonic": "#7f7f7f",
    "python": "#2ca02c",
    "node": "#ff7f0e",
}
ORDER = ["protoserve", "protoserve-nojournal", "protoserve-lua", "protoserve-rg", "tonic", "node", "python"]
SCENARIOS = [
    # id, title, kind, unit of one "unit", what the rate counts
    ("hello", "Unary SayHello (`reply` handler and Lua `script` handler)", "unary", "call", "calls/s"),
    ("echo1k", "Unary echo, 1 KiB payload", "unary", "call", "calls/s"),
    ("echo64k", "Unary echo, 64 KiB payload", "unary", "call", "calls/s"),
    ("list", "Server streaming: ListFeatures ({features} features per call)", "stream", "message", "messages/s"),
    ("record", "Client streaming: RecordRoute ({points} points per call)", "stream", "message", "messages/s"),
    ("chat", "Bidi streaming: RouteChat ping-pong round trip", "chat", "ping", "µs"),
    ("compute", "CPU-heavy handler: the RecordRoute haversine loop over {compute_points} points per call", "unary", "call", "calls/s"),
]
SHORT = {
    "hello": "SayHello",
    "echo1k": "echo 1 KiB",
    "echo64k": "echo 64 KiB",
    "list": "ListFeatures",
    "record": "RecordRoute",
    "chat": "RouteChat",
    "compute": "haversine loop",
}


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(x, digits=3):
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_range(xs):
    if not xs:
        return "–"
    return f"{fmt(min(xs))}–{fmt(max(xs))}"


def ratio(x, base):
    if x is None or not base:
        return None
    return x / base


def fmt_ratio(r):
    return "–" if r is None else f"{r:.2f}×"


def load(path):
    recs = [json.loads(line) for line in open(path) if line.strip()]
    return recs


class Run:
    """One measured run, normalised across h2load and bench-loadgen output."""

    def __init__(self, rec, kind):
        self.rec = rec
        ld = rec.get("load", {})
        self.problems = []
        self.value = None  # throughput (units/s) or p50 µs
        self.p99 = None
        self.units = 0
        if kind == "unary":
            self.value = ld.get("req_per_s")
            ok = ld.get("succeeded", 0)
            self.units = ok
            if ok != rec["requested"]:
                self.problems.append(f"{ok} of {rec['requested']} calls succeeded")
            exp = rec.get("expect_reply_bytes", 0)
            if ok and exp and ld.get("traffic_data", 0) != exp * ok:
                per = ld.get("traffic_data", 0) / ok
                self.problems.append(f"{per:.0f} reply bytes per call, expected {exp} (gRPC errors?)")
        elif kind == "stream":
            self.value = ld.get("msgs_per_s")
            self.units = ld.get("messages", 0)
            if ld.get("errors"):
                self.problems.append(f"{ld['errors']} calls failed: {ld.get('first_error', '')[:120]}")
        elif kind == "chat":
            self.value = ld.get("p50_us")
            self.p99 = ld.get("p99_us")
            self.units = ld.get("pings", 0)
            if ld.get("extra"):
                self.problems.append(f"{ld['extra']} unexpected extra replies")
        if ld.get("error"):
            self.problems.append(ld["error"])
        secs = ld.get("secs") or 0
        ticks = rec.get("cpu_ticks", 0)
        clk = rec.get("clk_tck", 100)
        self.cpu_s = ticks / clk
        self.cpu_us_per_unit = self.cpu_s * 1e6 / self.units if self.units else None
        self.busy = self.cpu_s / secs * 100 if secs else None
        self.rss_peak = rec.get("rss_peak_kib")
        if not self.value:
            self.problems.append("no result")
            self.value = None


def collect(recs):
    runs = defaultdict(list)  # (scen, server) -> [Run]
    na = {}
    rss_idle, rss_hwm, log_bytes = {}, {}, {}
    startup = defaultdict(list)  # (server, protos) -> [load]
    states = defaultdict(dict)  # round -> {states: rss_kib}
    kinds = {s[0]: s[2] for s in SCENARIOS}
    for r in recs:
        key = (r["scenario"], r["server"])
        if r["scenario"] == "startup":
            startup[(r["server"], r["protos"])].append(r["load"])
        elif r["scenario"] == "states":
            states[r["round"]][r["states"]] = r["rss_kib"]
        elif r["scenario"] == "googleapis":
            startup[(r["server"], "googleapis")].append(dict(r["load"], files=r.get("files")))
        elif "na" in r:
            na[key] = r["na"]
        elif "rss_idle_kib" in r:
            rss_idle[key] = r["rss_idle_kib"]
        elif "rss_hwm_kib" in r:
            rss_hwm[key] = r["rss_hwm_kib"]
        elif "log_bytes" in r:
            log_bytes[key] = r["log_bytes"]
        elif "load" in r:
            runs[key].append(Run(r, kinds[r["scenario"]]))
    return runs, na, rss_idle, rss_hwm, log_bytes, startup, states


def na_text(reason):
    if "check failed" in reason or "failed to start" in reason or "not built" in reason:
        return f"n/a: not yet supported ({reason})"
    return f"n/a: {reason}"


def mib(kib):
    return None if kib is None else kib / 1024


def build(recs, meta):
    runs, na, rss_idle, rss_hwm, log_bytes, startup, states = collect(recs)
    md = []
    summary = []  # (scenario label, server, speed ratio, cpu ratio)
    md.append("# protoserve benchmarks")
    md.append("")
    md.append(
        f"Generated by `bench/run` on {meta.get('date', '?')}: **{meta.get('cpu', '?')}**, "
        f"{meta.get('cores', '?')} cores, Linux {meta.get('kernel', '?')}. "
        f"Every server runs pinned to core 0 (`taskset -c 0`), the load generator to core 1; loopback only. "
        f"{meta.get('rounds')} measured rounds per server and scenario, servers alternating, each round starting one server later (A B C, B C A, C A B …), "
        f"each run sized by a warm-up to last about {meta.get('secs')} s"
        + (" (**quick mode**: short runs, figures are rough)" if meta.get("quick") else "")
        + f"; the whole run took {meta.get('elapsed_s', '?')} s."
    )
    md.append("")
    md.append(
        "Figures are medians over the rounds, with min–max. **× tonic** is the figure divided by the "
        "code-generated tonic peer's (throughput: above 1 is faster than tonic; latency and CPU: above 1 is "
        "slower / costlier). **CPU/unit** is the server's user+system CPU time (`/proc/PID/stat` utime+stime, "
        "all threads) over the run divided by the calls, messages or pings it handled; **busy** is that CPU "
        "time over the run's wall time (near 100 % means the server's core was the bottleneck). "
        "**peak RSS** is the largest VmRSS sampled every 50 ms during the runs."
    )
    md.append("")
    md.append(
        f"Versions: {meta.get('protoserve') or 'protoserve ?'} (commit {meta.get('protoserve_commit') or 'none'}); "
        f"{meta.get('rustc', '')}; {meta.get('python', '')}, grpcio {meta.get('grpcio', '')}; "
        f"Node {meta.get('node', '')}, @grpc/grpc-js {meta.get('grpc_js', '')}; {meta.get('h2load', '')}. "
        f"Load: h2load `-c {meta.get('conns')} -m {meta.get('streams')}` for unary calls; bench-loadgen with "
        f"{meta.get('conns')} connections and {meta.get('conns', 0) * meta.get('streams', 0)} calls in flight for "
        f"streams, {meta.get('points')} points per RecordRoute, one RouteChat stream at a time "
        f"({meta.get('per_stream')} pings per stream). See bench/README.md for the method."
    )
    md.append("")
    notes = []

    for scen, title, kind, unit, rate_unit in SCENARIOS:
        servers = sorted({s for (sc, s) in list(runs) + list(na) if sc == scen}, key=ORDER.index)
        if not servers:
            continue
        title = title.format(
            features=meta.get("features", "all"),
            points=meta.get("points", "?"),
            compute_points=f"{meta.get('compute_points', 10000):,}",
        )
        md.append(f"## {title}")
        md.append("")
        base = runs.get((scen, "tonic"))
        base_v = med([r.value for r in base if r.value]) if base else None
        base_p99 = med([r.p99 for r in base if r.p99]) if base else None
        base_cpu = med([r.cpu_us_per_unit for r in base if r.cpu_us_per_unit]) if base else None
        if kind == "chat":
            md.append(
                "| server | p50 µs | p50 min–max | p50 × tonic | p99 µs | p99 min–max | p99 × tonic "
                "| pings/s | CPU µs/ping | CPU × tonic | peak RSS MiB |"
            )
            md.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        else:
            md.append(
                f"| server | {rate_unit} | min–max | × tonic | CPU µs/{unit} | CPU × tonic | busy | peak RSS MiB |"
            )
            md.append("|---|--:|--:|--:|--:|--:|--:|--:|")
        for s in servers:
            if (scen, s) in na and (scen, s) not in runs:
                cols = 11 if kind == "chat" else 8
                md.append(f"| {NAMES[s]} | {na_text(na[(scen, s)])} |" + " |" * (cols - 2))
                continue
            rs = runs[(scen, s)]
            good = [r for r in rs if not r.problems]
            bad = [r for r in rs if r.problems]
            if bad:
                notes.append(f"{scen} / {NAMES[s]}: {len(bad)} run(s) left out: {bad[0].problems[0]}")
            vals = [r.value for r in good]
            cpu = med([r.cpu_us_per_unit for r in good if r.cpu_us_per_unit is not None])
            busy = med([r.busy for r in good if r.busy is not None])
            peak = max([r.rss_peak for r in rs if r.rss_peak] or [0]) or None
            v = med(vals)
            if kind != "chat" and busy is not None and busy < 90:
                notes.append(
                    f"{scen} / {NAMES[s]}: the server's core was only {busy:.0f} % busy, so the load generator, "
                    "flow control or other work on the machine limited this figure; CPU/unit is the steadier comparison"
                )
            cpu_r = ratio(cpu, base_cpu)
            if kind == "chat":
                p99s = [r.p99 for r in good if r.p99]
                pps = med([r.rec["load"].get("pings_per_s") for r in good])
                md.append(
                    f"| {NAMES[s]} | {fmt(v)} | {fmt_range(vals)} | {fmt_ratio(ratio(v, base_v))} | {fmt(med(p99s))} "
                    f"| {fmt_range(p99s)} | {fmt_ratio(ratio(med(p99s), base_p99))} | {fmt(pps)} | {fmt(cpu)} "
                    f"| {fmt_ratio(cpu_r)} | {fmt(mib(peak))} |"
                )
                if s != "tonic":
                    summary.append(("RouteChat p50 latency", s, ratio(base_v, v) if v else None, None))
                    summary.append(("RouteChat p99 latency", s, ratio(base_p99, med(p99s)) if p99s else None, None))
                    summary.append((SHORT["chat"], s, None, ratio(base_cpu, cpu) if cpu else None))
            else:
                md.append(
                    f"| {NAMES[s]} | {fmt(v)} | {fmt_range(vals)} | {fmt_ratio(ratio(v, base_v))} | {fmt(cpu)} "
                    f"| {fmt_ratio(cpu_r)} | {f'{busy:.0f} %' if busy is not None else '–'} | {fmt(mib(peak))} |"
                )
                if s != "tonic":
                    summary.append((SHORT[scen], s, ratio(v, base_v), ratio(base_cpu, cpu) if cpu else None))
        md.append("")
        if scen == "hello":
            md.append(
                "The protoserve rows answer `Hello, world!` like the peers: from a `reply` template "
                "(bench/handlers/reply/), with the call journal on (the default) and off, and from a Lua "
                "function (bench/handlers/lua/greeter.lua)."
            )
            on = runs.get((scen, "protoserve"))
            off = runs.get((scen, "protoserve-nojournal"))
            if on and off:
                cpu_on = med([r.cpu_us_per_unit for r in on if not r.problems and r.cpu_us_per_unit])
                cpu_off = med([r.cpu_us_per_unit for r in off if not r.problems and r.cpu_us_per_unit])
                if cpu_on and cpu_off:
                    md.append("")
                    md.append(
                        f"Journal cost: CPU per call with the journal on is {fmt(cpu_on)} µs against "
                        f"{fmt(cpu_off)} µs with `--journal off`, {100 * (cpu_on / cpu_off - 1):+.1f} % "
                        "(medians; every call is recorded with its metadata and both messages)."
                    )
            md.append("")
        if scen == "chat":
            md.append(
                "Each ping is one note on an open RouteChat stream, answered by exactly one note (see "
                "bench/README.md); the time is from sending the ping to receiving its answer."
            )
            md.append("")
        if scen == "compute":
            md.append(
                "`bench.Compute/Route`: one unary call runs the RecordRoute loop of handlers/route_guide.lua "
                "(a table per point, haversine between consecutive points) over a generated route, in a Lua "
                "script (bench/handlers/lua/compute.lua) and compiled into the tonic peer. Almost all the "
                "time is the handler's own code, so this row is the interpreter's cost, not the server's."
            )
            md.append("")

    # Memory per Lua state
    pairs = [sorted(by_n.items()) for by_n in states.values() if len(by_n) == 2]
    if pairs:
        (few, _), (many, _) = pairs[0]
        per_state = [(hi - lo) / (many - few) for (_, lo), (_, hi) in pairs]
        md.append("## Memory per Lua state (the repo's handlers/ and data/)")
        md.append("")
        md.append(
            f"The repo's handlers/ and data/ (RouteGuide in Lua over the tutorial's 100 features) served with "
            f"`--script-states {few}` and `--script-states {many}`; after the correctness check and a short "
            f"RecordRoute and ListFeatures load over every state, VmRSS of the two servers. One more state "
            f"costs (RSS {many} − RSS {few}) / {many - few}."
        )
        md.append("")
        md.append(f"| RSS, {few} state MiB | RSS, {many} states MiB | per state KiB | min–max | rounds |")
        md.append("|--:|--:|--:|--:|--:|")
        md.append(
            f"| {fmt(mib(med([p[0][1] for p in pairs])))} | {fmt(mib(med([p[1][1] for p in pairs])))} "
            f"| {fmt(med(per_state))} | {fmt_range(per_state)} | {len(pairs)} |"
        )
        md.append("")

    # Startup
    if startup:
        sizes = sorted({p for (_, p) in startup if p and p != "googleapis"})
        md.append("## Startup: spawn to first successful call")
        md.append("")
        md.append(
            "N generated .proto files importing each other (file i imports i−1 and i/2; every 10th file declares "
            "a service with two unary methods, each with a `reply` handler). Time from spawning the server "
            "to the first successful unary call (`/gen.S0000/Get`), polled every 2 ms; **listening** is when "
            "the server printed its `listening on` line. RSS is VmRSS right after that first call. The Node "
            "peer does the same work at startup (@grpc/proto-loader on every file, every service registered). "
            "The code-generated tonic peer has no per-proto startup work (its protos are compiled in), so it "
            "has one reference figure; the Python peer generates code ahead of serving and is left out."
        )
        md.append("")
        md.append("| protos | server | first call ms | min–max | listening ms | × tonic | RSS MiB |")
        md.append("|--:|---|--:|--:|--:|--:|--:|")
        tonic_loads = [l for l in startup.get(("tonic", 0), []) if l.get("first_call_ms")]
        tonic_ms = med([l["first_call_ms"] for l in tonic_loads])
        for size in sizes:
            for s in ("protoserve", "node"):
                ls = startup.get((s, size))
                if not ls:
                    continue
                okl = [l for l in ls if l.get("first_call_ms")]
                if not okl:
                    err = next((l.get("error") for l in ls if l.get("error")), "no successful call")
                    md.append(f"| {size} | {NAMES[s]} | {na_text('failed to start: ' + err)} | | | | |")
                    continue
                fc = [l["first_call_ms"] for l in okl]
                lst = [l["listening_ms"] for l in okl if l.get("listening_ms")]
                rss = med([l.get("rss_kib", 0) for l in okl])
                md.append(
                    f"| {size} | {NAMES[s]} | {fmt(med(fc))} | {fmt_range(fc)} | {fmt(med(lst))} "
                    f"| {fmt_ratio(ratio(med(fc), tonic_ms))} | {fmt(mib(rss))} |"
                )
        if tonic_loads:
            fc = [l["first_call_ms"] for l in tonic_loads]
            md.append(
                f"| (compiled in) | {NAMES['tonic']} | {fmt(tonic_ms)} | {fmt_range(fc)} "
                f"| {fmt(med([l['listening_ms'] for l in tonic_loads if l.get('listening_ms')]))} | 1.00× "
                f"| {fmt(mib(med([l.get('rss_kib', 0) for l in tonic_loads])))} |"
            )
        md.append("")

    # googleapis
    gapi = {s: ls for (s, p), ls in startup.items() if p == "googleapis"}
    if gapi:
        files = next((l.get("files") for ls in gapi.values() for l in ls if l.get("files")), "?")
        md.append("## Startup: all of googleapis")
        md.append("")
        md.append(
            f"googleapis and grafeas from the npm package google-proto-files ({files} files, 1 872 services), "
            "with one `reply` handler (google.pubsub.v1.Publisher/GetTopic). **cold**: `--no-cache`, "
            "every file parsed and linked; **warm**: from the descriptor cache written by an earlier run. "
            "Time from spawning the server to the first successful GetTopic call, on every core. "
            "**protoc**: `protoc --include_imports --descriptor_set_out` on the same files in the same run "
            "(it only compiles; it serves nothing). Peak RSS is VmHWM at the first call (protoc: at exit); "
            "steady RSS is VmRSS 2 s later, serving."
        )
        md.append("")
        md.append("| | first call ms | min–max | × protoc | peak RSS MiB | steady RSS MiB |")
        md.append("|---|--:|--:|--:|--:|--:|")
        protoc_ok = [l for l in gapi.get("protoc", []) if l.get("first_call_ms")]
        protoc_ms = med([l["first_call_ms"] for l in protoc_ok]) if protoc_ok else None
        labels = {"protoserve-cold": "protoserve, cold", "protoserve-warm": "protoserve, warm",
                  "protoc": "protoc (compile only)"}
        for s in ("protoserve-cold", "protoserve-warm", "protoc"):
            ls = gapi.get(s)
            if not ls:
                continue
            okl = [l for l in ls if l.get("first_call_ms")]
            if not okl:
                err = next((l.get("error") for l in ls if l.get("error")), "no result")
                md.append(f"| {labels[s]} | {na_text(err)} | | | | |")
                continue
            fc = [l["first_call_ms"] for l in okl]
            faster = ratio(protoc_ms, med(fc)) if protoc_ms and s != "protoc" else None
            steady = med([l["steady_kib"] for l in okl if l.get("steady_kib")]) if s != "protoc" else None
            md.append(
                f"| {labels[s]} | {fmt(med(fc))} | {fmt_range(fc)} | "
                f"{fmt_ratio(faster) + ' faster' if faster else ('1.00×' if s == 'protoc' else 'n/a')} | "
                f"{fmt(mib(med([l.get('hwm_kib', 0) for l in okl])))} | {fmt(mib(steady)) if steady else ''} |"
            )
        if not protoc_ok:
            md.append("")
            md.append("protoc was not available in this run (bench/run installs Debian's protobuf-compiler with apt-get).")
        md.append("")

    # Memory
    if rss_idle:
        scen_ids = [s[0] for s in SCENARIOS if any(k[0] == s[0] for k in rss_idle)]
        servers = sorted({k[1] for k in rss_idle}, key=ORDER.index)
        md.append("## Memory (VmRSS, MiB)")
        md.append("")
        md.append(
            "**idle**: right after the server became ready, before any call (first scenario it ran in). "
            "Per scenario: the peak VmRSS sampled during the measured runs of that scenario (a fresh server "
            "per scenario)."
        )
        md.append("")
        md.append("| server | idle | " + " | ".join(SHORT[s] for s in scen_ids) + " |")
        md.append("|---|--:|" + "--:|" * len(scen_ids))
        for s in servers:
            idle = next((rss_idle[(sc, s)] for sc in scen_ids if (sc, s) in rss_idle), None)
            cells = []
            for sc in scen_ids:
                rs = runs.get((sc, s), [])
                peak = max([r.rss_peak for r in rs if r.rss_peak] or [0]) or None
                cells.append(fmt(mib(peak)))
            md.append(f"| {NAMES[s]} | {fmt(mib(idle))} | " + " | ".join(cells) + " |")
        md.append("")

    big_logs = {k: v for k, v in log_bytes.items() if v > 64 * 1024}
    for (sc, s), v in sorted(big_logs.items()):
        notes.append(f"{sc} / {NAMES[s]}: the server wrote {v / 1024:.0f} KiB to stderr during the scenario (per-call logging?)")
    if notes:
        md.append("## Notes")
        md.append("")
        for n in notes:
            md.append(f"- {n}")
        md.append("")
    md.append("![ratios to tonic](results.svg)")
    md.append("")
    return "\n".join(md), summary


def svg(summary, meta):
    """Two panels of horizontal bars: speed vs tonic, and CPU efficiency vs tonic."""
    panels = [
        ("Speed relative to code-generated tonic (higher is better; 1 = tonic)", 2),
        ("CPU efficiency relative to tonic: tonic's CPU per call ÷ server's (higher is better)", 3),
    ]
    rows_by_panel = []
    for _, idx in panels:
        rows = [(lbl, s, t[idx]) for t in summary for (lbl, s) in [(t[0], t[1])] if t[idx] is not None]
        rows_by_panel.append(rows)
    bar_h, gap, group_gap = 14, 2, 10
    left, right, width = 190, 70, 900
    plot_w = width - left - right
    y = 50
    out = []
    legend_servers = sorted({s for rows in rows_by_panel for (_, s, _) in rows}, key=ORDER.index)
    for (ptitle, _), rows in zip(panels, rows_by_panel):
        if not rows:
            continue
        vmax = max(1.0, max(v for _, _, v in rows)) * 1.08
        out.append(f'<text x="{left}" y="{y}" font-size="13" font-weight="bold">{esc(ptitle)}</text>')
        y += 12
        top = y
        labels = []
        for lbl in dict.fromkeys(r[0] for r in rows):
            group = [r for r in rows if r[0] == lbl]
            gy = y
            for _, s, v in sorted(group, key=lambda r: ORDER.index(r[1])):
                w = max(1.0, v / vmax * plot_w)
                out.append(
                    f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{COLORS[s]}">'
                    f"<title>{esc(NAMES[s])}: {v:.3f}</title></rect>"
                )
                out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}" font-size="11">{v:.2f}×</text>')
                y += bar_h + gap
            labels.append((lbl, (gy + y - gap) / 2))
            y += group_gap
        for lbl, cy in labels:
            out.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" font-size="12" text-anchor="end">{esc(lbl)}</text>')
        x1 = left + 1.0 / vmax * plot_w
        out.append(f'<line x1="{x1:.1f}" y1="{top - 4}" x2="{x1:.1f}" y2="{y - group_gap + 4}" stroke="#000" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{x1:.1f}" y="{y + 6}" font-size="11" text-anchor="middle">1× (tonic)</text>')
        out.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{y - group_gap + 4}" stroke="#444"/>')
        y += 34
    ly = y
    lx = left
    for s in legend_servers:
        item_w = 30 + 7 * len(NAMES[s])
        if lx + item_w > width - 10 and lx > left:
            lx, ly = left, ly + 20
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{COLORS[s]}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}" font-size="12">{esc(NAMES[s])}</text>')
        lx += item_w
    ly += 22
    out.append(
        f'<text x="{left}" y="{ly}" font-size="11" fill="#444">Startup times are in RESULTS.md: the '
        "code-generated peer has no per-proto startup to compare with.</text>"
    )
    y = ly + 16
    title = f"protoserve vs peers — {meta.get('cpu', '')}, {meta.get('cores', '')} cores, {meta.get('date', '')}"
    if meta.get("quick"):
        title += " (quick mode)"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" viewBox="0 0 {width} {y}" '
        f'font-family="Helvetica, Arial, sans-serif">\n<rect width="100%" height="100%" fill="#fff"/>\n'
        f'<text x="{width / 2}" y="24" font-size="15" font-weight="bold" text-anchor="middle">{esc(title)}</text>\n'
    )
    if not any(rows_by_panel):
        out.append(f'<text x="{left}" y="{y - 40}" font-size="13">no ratios: no scenario had both tonic and another server</text>')
    return head + "\n".join(out) + "\n</svg>\n"


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def main(argv):
    if len(argv) != 5:
        sys.exit(__doc__)
    recs = load(argv[1])
    meta = json.load(open(argv[2]))
    md, summary = build(recs, meta)
    with open(argv[3], "w") as f:
        f.write(md)
    with open(argv[4], "w") as f:
        f.write(svg(summary, meta))


if __name__ == "__main__":
    main(sys.argv)
