"""bench/run.py's Markdown table (bench/results/latest.md) and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = (("runtime-api", "lbsync runtime API (no reload)", "tab:blue"),
         ("reload-baseline", "baseline: render + haproxy -sf per change", "tab:red"))


def _f(x: object, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def write_report(r: dict[str, Any], results: Path, json_path: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    plots = []
    if "side_by_side" in r:
        plots += [plot_side_by_side(r["side_by_side"], results / "sidebyside_timeline.png")]
    if "side_by_side" in r or "join" in r:
        plots += [plot_latency(r, results / "latency.png")]
    if "scale" in r:
        plots += [plot_scale(r["scale"], results / "scale.png")]
    if "realm" in r:
        plots += [plot_realm(r["realm"], results / "realm.png")]
    (results / "latest.md").write_text(markdown(r, json_path, plots))


def markdown(r: dict[str, Any], json_path: Path, plots: list[Path]) -> str:
    m = r["machine"]
    out = [f"# lbsync benchmark ({'quick' if r['quick'] else 'full'} run)", "",
           f"`{r['command']}` — {r['started_utc']} → {r['finished_utc']} ({r['duration_s']} s)",
           "", f"Machine: {m['platform']}, {m['cpus']} CPUs, {m['memory_gb']} GB, {m['haproxy']},"
           f" {m['serf']}, Python {m['python']}, load average at start "
           f"{', '.join(f'{x:.1f}' for x in m['load_avg_at_start'])} (shared, noisy machine).",
           "", f"Backends: {r['backends']}.", "", "Load: wrk at a fixed rate (bench/paced.lua: "
           "connections × 1000 / delay_ms), a new connection per request. failed = requests "
           "sent that got no answer (socket error, timeout) + non-2xx/3xx answers.", "",
           f"Raw figures: `{json_path}`.",
           "", "| measure | figure | target |", "|---|---|---|"]
    if "join" in r:
        j = r["join"]["join"]
        met = "met" if j["p50"] <= 0.5 else "MISSED"
        out.append(f"| join → first request served (n={j['n']}) | p50 {j['p50']:.3f} s, "
                   f"p95 {j['p95']:.3f} s | p50 ≤ 0.5 s: {met} |")
        if st := r["join"].get("join_stages"):
            out.append("| join, stage by stage (p50 from the agent's start) | "
                       + "; ".join(f"{k.removesuffix('_s')} {v['p50']:.3f} s"
                                   for k, v in st.items())
                       + f"; served {j['p50']:.3f} s | – |")
    if "leave_under_load" in r:
        lv = r["leave_under_load"]
        out.append(f"| graceful leave under load ({len(lv['runs'])} runs) | failed "
                   f"{lv['failed_total']} of {lv['requests_total']}; out of rotation p50 "
                   f"{lv['out_of_rotation_s_p50']:.3f} s | 0 failed |")
    if "crash_under_load" in r:
        c = r["crash_under_load"]
        out.append(f"| `kill -9` under load ({len(c['runs'])} runs) | failed {c['failed_total']}"
                   f" of {c['requests_total']} GETs; DOWN p50 {c['down_s_p50']:.2f} s; out of "
                   f"haproxy.cfg p50 {c['removed_from_cfg_s_p50']:.2f} s | 0 failed GETs |")
    if "churn_reloads" in r:
        out.append(f"| HAProxy reloads during parts 1-3 | {r['churn_reloads']} | 0 |")
    if "realm" in r:
        cy = r["realm"]["cycles"]
        t = cy["staying_total"]
        met = "met" if t["lost"] == t["duplicated"] == cy["calls"]["failed"] == 0 else "MISSED"
        out.append(f"| one realm: {cy['cycles']} scale cycle(s) 3 → 5 → 3, staying members | "
                   f"{t['lost']} events lost, {t['duplicated']} duplicated of {t['expected']}; "
                   f"{cy['calls']['failed']} calls failed of "
                   f"{cy['calls']['ok'] + cy['calls']['failed']} | 0 / 0 / 0: {met} |")
    if "side_by_side" in r:
        sb = r["side_by_side"]
        a = sb["runtime-api"]
        out += ["", f"## Side by side: {a['cycles']} scale cycles 1 → 5 → 1 "
                f"({a['membership_changes']} membership changes) under the same load", "",
                "| mode | requests | measured rate | failed | failed % | p50 | p99 | reloads |",
                "|---|---|---|---|---|---|---|---|"]
        for key, label, _ in MODES:
            x = sb[key]
            ld = x["load"]
            share = 100 * ld["failed"] / ld["requests"] if ld["requests"] else 0.0
            out.append(f"| {label} | {ld['requests']} | {ld['rate_req_s']} req/s | {ld['failed']}"
                       f" | {share:.3f} % | {ld['latency_ms']['p50']:.2f} ms | "
                       f"{ld['latency_ms']['p99']:.2f} ms | {x['reloads']} |")
        rt = sb["ratios_baseline_over_runtime"]
        out.append(f"| ratio baseline / runtime API | | | {_f(rt['failed'], 2)} | | "
                   f"{_f(rt['latency_p50'], 2)} | {_f(rt['latency_p99'], 2)} | "
                   f"{_f(rt['reloads'], 2)} |")
        if "wamp" in a:
            out += wamp_table(sb)
        cpu = a.get("lbsync_agent_cpu_pct_mean")
        out += ["", f"lbsync agent CPU during the runtime-API cycles: {cpu} % of one core (mean)."]
        out += ["", "failed = requests wrk sent that got no answer (socket error, timeout) + "
                "non-2xx/3xx answers. wrk's own socket-error counters (in the JSON) also count "
                "idle keep-alive connections the server closed, which are not failed requests. "
                "A probe client (one GET every 20 ms) beside wrk: failed "
                + ", ".join(f"{sb[k]['probe']['failed']} of {sb[k]['probe']['requests']} ({k})"
                            for k, _, _ in MODES) + ".",
                "", "Ratios are `null`/– where the runtime-API figure is 0. Targets: 0 failed "
                "requests and 0 reloads in runtime-API mode: "
                + ("met" if a["load"]["failed"] == 0 and a["reloads"] == 0 else "MISSED") + "."]
    if "scale" in r:
        out += ["", "## Scale: join storm (every member's Serf agent asked to join at once)", "",
                "| members | storm → all UP | last member: alive in Serf / registry / in "
                "HAProxy / UP | joins refused at first | N-server plan: Runtime API batch | "
                "agent CPU in storm (mean / max) | agent RSS max | lb Serf CPU in storm "
                "(mean / max) | lb Serf `members` answer (p50 / max) | members' Serf CPU | "
                "UP 4 s later (bench.scale.REST_S) |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in r["scale"]:
            ap, i0, st, i1 = (s.get("apply_plan"), s["agent_idle_0_members"], s["agent_storm"],
                              s["agent_idle_n_members"])
            reached = s.get("all_reached_s", {})
            ls = s.get("lb_serf_storm", {})
            joins = s.get("joins") or {}
            rpc = s.get("lb_serf_members_rpc_ms_storm") or {}
            up = (f"{s['storm_to_all_up_s']:.2f} s" if s.get("storm_to_all_up_s") is not None
                  else f"not within {s.get('limit_s', '?')} s")
            refused = (f"{s['members'] - joins['first_try']} ({joins['retries']} retries)"
                       if "first_try" in joins else "–")
            out.append(
                f"| {s['members']} | {up} | "
                + " / ".join(_f(reached.get(k), 2) for k in ("serf_alive", "registry",
                                                           "haproxy", "up"))
                + f" s | {refused} | "
                + (f"{_f(ap['runtime_batch_ms'], 1)} ms ({ap['batch_size']} servers) | "
                   if ap else "– | ")
                + f"{_pct(st)} | "
                f"{max(i0.get('rss_mb_max', 0), st.get('rss_mb_max', 0), i1.get('rss_mb_max', 0))}"
                f" MB | {_pct(ls)} | "
                f"{rpc.get('p50', '–')} / {rpc.get('max', '–')} ms | "
                f"{s.get('members_serf_cpu_s_storm', '–')} CPU-s | "
                f"{s.get('up_after_rest', '–')} |")
        run_under = r["scale"][0].get("members_run_under") if r["scale"] else None
        out += ["", "CPU % is of one core (psutil), sampled every 0.5 s. The stages are when "
                "the last of the N members reached each, in seconds from the instant every "
                "member's agent (started alone beforehand) was asked to join the load balancer's "
                "(bench/joinstorm.py). A refused join (memberlist serves 128 push/pulls at once) "
                "is asked again 1 s later, as `-retry-join -retry-interval 1s` does."
                + (f" The members' agents ran under {run_under}: they stand in for other "
                   "hosts, so the load balancer's processes get the CPU first."
                   if run_under else "")]
    if "stages" in r:
        keys = ["desired_ms", "plan_ms", "runtime_show_servers_ms", "runtime_batch_ms",
                "render_ms", "haproxy_check_ms", "write_ms", "pass_ms"]
        out += ["", "## One reconcile pass, stage by stage (bench/stages.py, ms)", "",
                "| servers | pass | " + " | ".join(k.removesuffix("_ms") for k in keys) + " |",
                "|---|---|" + "---|" * len(keys)]
        for row in r["stages"]:
            for label, d in (("one join (median)", row["one_join_pass_median"]),
                             ("first: all N added", row["first_pass_all_servers"])):
                out.append(f"| {row['servers']} | {label} | "
                           + " | ".join(_f(d.get(k), 1) for k in keys) + " |")
    if "data_path" in r:
        dp = r["data_path"]
        med = dp["median"]
        out += ["", "## Data path: runtime-added servers vs servers in haproxy.cfg", "",
                f"{dp['members']} members, {dp['rounds']} rounds of {dp['seconds_per_run']} s, "
                f"{dp.get('order', 'in ABBA order')}; {dp['wrk']}; medians.", "",
                "| servers | mode | req/s | p50 | p99 | errors |", "|---|---|---|---|---|---|"]
        for key, v in med.items():
            kind, mode = key.split("_", 1)
            out.append(f"| {kind} | {mode} | {v['req_s']:.0f} | {v['p50_ms']:.2f} ms | "
                       f"{v['p99_ms']:.2f} ms | {v['errors']:.0f} |")
        ratios = dp["throughput_ratio_config_over_runtime"]
        rounds = dp.get("ratio_per_round", {})
        out += ["", f"Throughput config/runtime, the median of each round's own ratio: "
                f"keep-alive {ratios['keepalive']}, new connection per request "
                f"{ratios['close']}; guard (within {dp['guard_within']:.0%}): "
                f"{'met' if dp['guard_ok'] else 'MISSED'}."
                + (" One round's ratio strays by (sd) " + ", ".join(
                    f"{mode} {v}" for mode, v in dp["ratio_sd_per_round"].items()) + "."
                   if dp.get("ratio_sd_per_round") else "")
                + (" Per round: " + "; ".join(f"{mode} {', '.join(map(str, v))}"
                                             for mode, v in rounds.items()) + "."
                   if rounds else "")]
    if "realm" in r:
        out += realm_section(r["realm"], r["machine"])
    if "rotation" in r:
        out += rotation_section(r["rotation"])
    if "faults" in r:
        out += ["", "## Faults between hosts (network namespaces, bench/faults.py)", "",
                r["faults"]["table"]]
    out += ["", "Plots: " + ", ".join(f"![{p.stem}]({p.name})" for p in plots), ""]
    return "\n".join(out)


def rotation_section(rot: dict[str, Any]) -> list[str]:
    """Part 9: one row per mode (bench/rotation.py)."""
    modes = rot["modes"]
    first = next(iter(modes.values()))
    out = ["", f"## Certificate rotation: {first['rotations']} rotations, one every "
               f"{first['every_s']:g} s, under {rot['wamp_held']} held + {rot['wamp_rotating']} "
               f"rotating WAMP sessions (wss://) and HTTPS at {rot['https_rate_req_s']} req/s", "",
           "| mode | reloads | WAMP sessions opened | dropped (held) | reconnects | calls failed "
           "| HTTPS failed | HAProxy processes max | new serial served after (s) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for mode, m in modes.items():
        w, h = m["wamp"], m["http"]
        out.append(
            f"| {mode} | {m['reloads']} | {w['sessions_opened']} | "
            f"{w['dropped']} ({w['dropped_held']}) | "
            f"{w['reconnects']} | {w['calls_failed']}/{w['calls_ok'] + w['calls_failed']} | "
            f"{h['failed']}/{h['requests']} | {m['haproxy_processes_max']} | "
            + ", ".join(f"{x['served_after_s']:.2f}" for x in m["rounds"]) + " |")
    a = modes.get("runtime-api")
    met = a is not None and a["reloads"] == 0 and a["wamp"]["dropped"] == 0
    out += ["", f"Setting: {rot['setting']}. Target: 0 sessions dropped and 0 reloads "
                f"through the Runtime API: {'met' if met else 'MISSED'}. A mode whose WAMP "
                "sessions opened is below the clients' count (held + rotating) measured no "
                "WAMP load: its 0 drops mean nothing (a machine too busy to connect)."]
    return out


def _pct(usage: dict[str, Any]) -> str:
    """A usage window's CPU, mean / max; "–" when the window held no sample (a storm
    shorter than the 0.5 s sampling interval)."""
    if usage.get("cpu_pct_mean") is None:
        return "– (no sample)"
    return f"{usage['cpu_pct_mean']} % / {usage['cpu_pct_max']} %"


def _failed_joins(sample: dict[str, Any]) -> int:
    return sum(1 for f in sample.get("connect_failures", []) if "reason" in f)


def _ms(x: object) -> str:
    return "–" if x is None else f"{x:.2f} ms"


def _s(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f} s" if x < 0 else f"{x:.2f} s"


REALM_SERIES = (("call_same_node", "call, same node", "node1 → callee on node1"),
                ("call_cross_node", "call, across nodes", "node2 → callee on node1"),
                ("event_same_node", "event (publish → event), same node",
                 "node1 → subscriber on node1"),
                ("event_cross_node", "event (publish → event), across nodes",
                 "node2 → subscriber on node1"))


def realm_section(rm: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    lat, cy, jn, sq = rm["latency"], rm["cycles"], rm["join"], rm["n_squared"]
    rt = lat["ratio_cross_over_same_p50"]
    out = ["", "## One realm across the fleet: router links between the edge nodes", "",
           f"Real local cluster (`lbsync up --nodes {rm['nodes']} --proxies 1`: HAProxy, Serf, "
           "lbsync, Crossbar nodes of 1 router + 1 proxy worker, each router linked to every "
           f"other), up in {rm['up_s']:.1f} s. Clients: {rm['clients']}; the WELCOME's "
           "`x_cb_node` confirms each session's node.", "",
           f"### Latency, same node vs across nodes ({lat['n_per_series']} sequential round "
           f"trips per series after {lat['warmup_per_series']} warm-up, the 4 series "
           "interleaved)", "",
           "| series | client → peer | n | p50 | p99 | max | failed |",
           "|---|---|---|---|---|---|---|"]
    for key, label, path in REALM_SERIES:
        x = lat[key]
        out.append(f"| {label} | {path} | {x['n']} | {_ms(x['p50'])} | {_ms(x['p99'])} | "
                   f"{_ms(x['max'])} | {x['failed']} |")
    out += ["", f"Across nodes / same node, p50: calls {_f(rt['call'], 2)}×, events "
            f"{_f(rt['event'], 2)}×. Across nodes a message crosses one more router and one "
            "router link (node1's link to node2 mirrors node1's callee and subscription onto "
            "node2). An event is timed from the publish to its arrival at the subscriber, in "
            "one process (one clock)."]
    t = cy["staying_total"]
    ups = [s["s"] for s in cy["scales"] if s["to"] == 5]
    downs = [s["s"] for s in cy["scales"] if s["to"] == 3]
    met = "met" if t["lost"] == t["duplicated"] == cy["calls"]["failed"] == 0 else "MISSED"
    out += ["", f"### Through {cy['cycles']} scale cycle{'s' if cy['cycles'] > 1 else ''} "
            f"3 → 5 → 3 ({cy['duration_s']:.0f} s under load)", "",
            f"Publishers on node1 and node2 (the nodes that stay) publish numbered, acknowledged "
            f"events, {cy['publish_rate_per_publisher']:g}/s each, from before the first "
            f"scale-up to after the last scale-down; subscribers on node1 and node2 count them "
            f"per (publisher, subscriber) pair. Callers on node1 and node2 call a procedure "
            f"registered on the other one, {cy['call_rate_per_caller']:g}/s each. `lbsync scale "
            f"5` took {', '.join(f'{x:.1f}' for x in ups)} s (until both new nodes are UP in "
            f"HAProxy), `lbsync scale 3` {', '.join(f'{x:.1f}' for x in downs)} s; "
            f"{cy['hold_s']:g} s at each size.", "",
            "| publisher → subscriber | acknowledged | received | lost | duplicated | "
            "reordered | unacknowledged yet received |", "|---|---|---|---|---|---|---|"]
    for pair, x in cy["pairs_staying"].items():
        a, b = pair.split("->")
        where = "same node" if a == b else "across nodes"
        out.append(f"| {a} → {b} ({where}) | {x['expected']} | {x['received']} | {x['lost']} | "
                   f"{x['duplicated']} | {x['reordered']} | {x['unexpected']} |")
    out.append(f"| **staying members, total** | {t['expected']} | {t['received']} | "
               f"**{t['lost']}** | **{t['duplicated']}** | {t['reordered']} | "
               f"{t['unexpected']} |")
    jt = cy["joining_total"]
    firsts = [x["first_event_after_subscribe_s"] for x in cy["pairs_joining"].values()]
    firsts = [f for f in firsts if f is not None]
    c = cy["calls"]
    el = cy["event_latency_ms"]
    out += ["", f"Subscribers on the joining nodes (node4, node5, subscribed once their node is "
            f"UP, closed before it leaves; {len(cy['pairs_joining'])} (publisher, subscriber) "
            f"pairs): {jt['received']} events received, {jt['lost']} lost between each pair's "
            f"first and last event, {jt['duplicated']} duplicated"
            + (f"; first event {min(firsts):.3f}-{max(firsts):.3f} s after the subscribe"
               if firsts else "") + ".", "",
            "| calls across nodes during the cycles | failed | p50 | p99 | max |",
            "|---|---|---|---|---|",
            f"| {c['ok'] + c['failed']} | **{c['failed']}** | {_ms(c['latency_ms']['p50'])} | "
            f"{_ms(c['latency_ms']['p99'])} | {_ms(c['latency_ms']['max'])} |", "",
            f"Events during the cycles, publish → event: same node p50 "
            f"{_ms(el['same_node']['p50'])} / p99 {_ms(el['same_node']['p99'])}, across nodes "
            f"p50 {_ms(el['cross_node']['p50'])} / p99 {_ms(el['cross_node']['p99'])}. "
            f"Publishes failed: {cy['publish_failed']}; sessions dropped: "
            f"{len(cy['sessions_dropped'])}. Latencies here include the CPU the joining "
            "Crossbar nodes take while they start (2 CPUs, see the plot's timeline); the "
            "quiet-cluster figures are the table above.", "",
            f"Target for the members that stay: 0 lost, 0 duplicated, 0 failed calls: {met}."]
    md = jn["medians"]
    out += ["", f"### Join reach: `lbsync scale 4` from 3 nodes, medians of {jn['runs']} run(s)",
            "", "A client connects to the new node as soon as its /info answers 200 and calls a "
            "procedure registered on node1 until it answers (wamp.error.no_such_procedure until "
            "node1's router link to the new node has mirrored the registration).", "",
            "| from → to | median |", "|---|---|",
            f"| new node's /info 200 → its client's first successful call to node1 | "
            f"{_s(md['info_200_to_call_s'])} |",
            f"| new node UP in HAProxy (Runtime API) → first successful call | "
            f"{_s(md['up_in_haproxy_to_call_s'])} |",
            f"| sidecar's ready=1 (its log) → first successful call | "
            f"{_s(md['ready_1_to_call_s'])} |",
            f"| `lbsync scale 4` started → /info 200 | {_s(md['info_200_s'])} |",
            f"| `lbsync scale 4` started → node1's link to the new node up | "
            f"{_s(md['node1_link_to_new_up_s'])} |",
            f"| `lbsync scale 4` started → first successful call | {_s(md['first_call_ok_s'])} |",
            f"| `lbsync scale 4` started → ready=1 | {_s(md['sidecar_ready_1_s'])} |",
            f"| `lbsync scale 4` started → UP in HAProxy | {_s(md['up_in_haproxy_s'])} |",
            f"| ready=1 → node1's link to the new node up (its links-state.json) | "
            f"{_s(md['ready_1_to_node1_link_up_s'])} |", "",
            "A negative time: the new node's clients reached node1's callees before the node "
            "was UP (or ready=1), i.e. before HAProxy sends it clients. The call needs node1's "
            "link to the new node (it mirrors node1's registrations there); the new node's "
            "ready=1 waits for the new node's own links to the serving peers (which carry "
            "the other direction), so what keeps the new node from taking clients before "
            "node1's link to it is up is the time HAProxy takes to mark it UP after ready=1. "
            "node1's link `since` is when its router's 0.1 s look noticed the link up, so a call "
            "can succeed a little before it. Per run (since `lbsync scale 4` started): "
            + "; ".join(f"/info {_s(x['info_200_s'])}, session on the new node "
                        f"{_s(x['session_on_new_node_s'])}"
                        + (f" (after {_failed_joins(x)} failed join attempt(s))"
                           if _failed_joins(x) else "")
                        + f", call {_s(x['first_call_ok_s'])}, node1's link "
                        f"{_s(x['node1_link_to_new_up_s'])}, ready=1 "
                        f"{_s(x['sidecar_ready_1_s'])}, UP {_s(x['up_in_haproxy_s'])}"
                        for x in jn["samples"]) + "."]
    reasons = sorted({f["reason"] for x in jn["samples"] for f in x.get("connect_failures", [])
                      if "reason" in f})
    if reasons:
        out += ["", "Join attempts to the new node that failed after its /info answered 200 "
                "(each attempt waits at most 2 s): " + "; ".join(f"`{r}`" for r in reasons)
                + " (the JSON has the new node's Crossbar log lines of that moment)."]
    out += ["", "### The n² cost: every node links to every other", "",
            "| nodes | links n(n-1) | `lbsync up` → `lbsync links --check` passes | → all UP in "
            "HAProxy | router worker RSS (median) | router CPU at rest (median / all) | one "
            "node's Crossbar RSS (processes) | whole cluster at rest: RSS / CPU |",
            "|---|---|---|---|---|---|---|---|"]
    for row in sq["rows"]:
        if not row["ok"]:
            out.append(f"| {row['n']} | {row['links_total']} | did not complete: "
                       f"{row.get('error', 'links --check failed')[:200]} | | | | | |")
            continue
        rr, rc, nc = row["router_rss_mb"], row["router_cpu_pct"], row["node_crossbar_rss_mb"]
        out.append(f"| {row['n']} | {row['links_total']} | {row['up_to_links_check_ok_s']:.1f} s "
                   f"| {row['up_to_all_up_in_haproxy_s']:.1f} s | {rr['median']:.0f} MB | "
                   f"{rc['median']:.1f} % / {rc['sum']:.1f} % | {nc['median']:.0f} MB "
                   f"({nc['processes_per_node']:g}) | {row['cluster_rss_mb']:.0f} MB / "
                   f"{row['cluster_cpu_pct']:.1f} % |")
    largest = sq["largest_n_ok"]
    stopped = [row for row in sq["rows"] if not row["ok"]]
    asked = ", ".join(map(str, sq["sizes_asked"]))
    out += ["", f"Sizes asked: {asked}; the full mesh ran up to **{largest} nodes** "
            f"({largest * (largest - 1) if largest else 0} links) on this {machine['cpus']}-CPU,"
            f" {machine['memory_gb']} GB machine"
            + (f"; {stopped[0]['n']} nodes did not complete (see above), so it grew no "
               "further" if stopped else "") + ". The links are counted every 0.2 s from each "
            "node's links.json and links-state.json (what `lbsync links --check` reads; its "
            "exit code right after: "
            + ", ".join(str(row.get("links_check_exit", "–")) for row in sq["rows"])
            + "). CPU % is of one core, over "
            f"{sq['rows'][0].get('idle_s', 0):g} s at rest after `lbsync links --check` passed; "
            "RSS in MiB. A node's Crossbar is its controller, router and proxy worker."]
    return out


def wamp_table(sb: dict[str, Any]) -> list[str]:
    w0 = sb["runtime-api"]["wamp"]
    out = ["", f"WAMP during the same cycles: {w0['held']} autobahn clients hold one session "
           f"each (they land on {w0['kept_member']}, the member that never leaves), "
           f"{w0['rotating']} renew theirs every {w0['rotate_s'][0]:g}-{w0['rotate_s'][1]:g} s "
           f"(so members hold sessions when they leave); every client calls its own echo "
           f"procedure every {w0['call_interval_s']:g} s. A scale-down, in both modes: serf "
           "leave, wait until HAProxy has lost the server, 1 s, stop the node's Crossbar.", "",
           "| mode | sessions | dropped | dropped on the kept member | connect failures | "
           "calls failed | call p50 / p99 | leave → out of HAProxy (p50) | HAProxy processes "
           "(max / at end) |", "|---|---|---|---|---|---|---|---|---|"]
    for key, label, _ in MODES:
        x = sb[key]
        w = x["wamp"]
        c = w["calls"]
        out.append(
            f"| {label} | {w['sessions_opened']} | {len(w['drops'])} (held {w['drops_held']}) "
            f"| {w['drops_on_kept_member']} | {len(w['connect_failures'])} | {c['failed']} of "
            f"{c['ok'] + c['failed']} | {_f(c['latency_ms']['p50'], 1)} / "
            f"{_f(c['latency_ms']['p99'], 1)} ms | "
            f"{x['leave_to_out_of_haproxy_s']['p50']:.2f} s | "
            f"{x['haproxy_processes_max']} / {x['haproxy_processes_at_end']} |")
    out += ["", "A drop is a session that ended without its client's GOODBYE; its client opens "
            "a new one at once. HAProxy processes: lbsync mode runs one master and one worker; "
            "the baseline's reloads leave old processes running while they hold sessions."]
    return out


def plot_side_by_side(sb: dict[str, Any], path: Path) -> Path:
    fig, axes = plt.subplots(2, 1, figsize=(14, 8))
    fig.subplots_adjust(top=0.87, bottom=0.07, hspace=0.38, left=0.05, right=0.74)
    for ax, (key, label, color) in zip(axes, MODES, strict=True):
        x = sb[key]
        t0 = x["wrk_started"]
        ts = [t - t0 for t, v in x["servers"] if v]
        up = [v["up"] for _, v in x["servers"] if v]
        gaps = [t - t0 for t, v in x["servers"] if not v]
        ax.step(ts, up, where="post", color=color, label="servers UP in HAProxy")
        if gaps:
            ax.plot(gaps, [0] * len(gaps), "x", color="grey", label="runtime socket unreachable")
        # Reloads before the load started (the baseline's first members) are off the plot.
        for i, t in enumerate(t for t in x.get("reload_times", []) if t >= t0):
            ax.axvline(t - t0, color="orange", lw=0.8, ls=":",
                       label="HAProxy reload" if i == 0 else None)
        hap = [(t - t0, v["n"]) for t, v in x.get("haproxy_processes", []) if v]
        if hap:
            ax.step([t for t, _ in hap], [n for _, n in hap], where="post", color="purple",
                    lw=1, ls="--", label="HAProxy processes")
        top = max([6, *[n + 1 for _, n in hap]])
        if "wamp" in x:
            drops = [d["t"] - t0 for d in x["wamp"]["drops"]]
            ax.plot(drops, [top - 0.5] * len(drops), "x", color="red", ms=7,
                    label=f"WAMP session dropped ({len(drops)})")
        ax.set_ylabel("servers UP / processes")
        ax.set_ylim(0, top)
        ax2 = ax.twinx()
        tl = x["load"]["timeline"]
        ax2.plot([row["t"] - t0 + 0.5 for row in tl], [row["ok"] for row in tl], color="grey",
                 lw=0.8, alpha=0.7, label="wrk: answered requests per second")
        fails = [t - t0 for t in x["probe"]["failed_at"]]
        ax2.plot(fails, [0] * len(fails), "v", color="black", ms=7, clip_on=False,
                 label=f"probe client: failed request ({len(fails)})")
        ax2.set_ylabel("answered req/s (wrk)")
        ax2.set_ylim(bottom=0)
        ld = x["load"]
        ax.set_title(f"{label}: {ld['failed']} failed of {ld['requests']} requests "
                     f"({ld['rate_req_s']} req/s), {x['reloads']} reloads")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left", bbox_to_anchor=(1.07, 1.0), fontsize=8)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.set_xlabel("seconds since the load started")
    fig.suptitle("Scale cycles 1 → 5 → 1 under a fixed request rate (wrk) and WAMP sessions, "
                 "same machine, same run"
                 "\n(failed-request times from a Python probe client sending a GET every 20 ms "
                 "beside wrk; totals in the titles are wrk's)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(r: dict[str, Any], path: Path) -> Path:
    wamp = "side_by_side" in r and "wamp" in r["side_by_side"]["runtime-api"]
    fig, axes = plt.subplots(1, 3 if wamp else 2, figsize=(16 if wamp else 11, 4.2))
    a1, a2 = axes[0], axes[1]
    if "join" in r:
        js = sorted(s["join_s"] for s in r["join"]["samples"])
        a1.plot(js, [(i + 1) / len(js) for i in range(len(js))], "o-", ms=3)
        a1.axvline(0.5, color="red", ls="--", label="target p50 ≤ 0.5 s")
        a1.set_xlabel("member join → first request served by it (s)")
        a1.set_ylabel("fraction of joins")
        a1.set_title(f"Join latency, {len(js)} joins (CDF)")
        a1.legend(fontsize=8)
        a1.grid(alpha=0.3)
    if "side_by_side" in r:
        keys = ["p50", "p90", "p99", "p999", "max"]
        width = 0.38
        for k, (key, label, color) in enumerate(MODES):
            lat = r["side_by_side"][key]["load"]["latency_ms"]
            a2.bar([i + (k - 0.5) * width for i in range(len(keys))],
                   [max(lat[q], 0.01) for q in keys], width, color=color, label=label)
        a2.set_xticks(range(len(keys)), ["p50", "p90", "p99", "p99.9", "max"])
        a2.set_yscale("log")
        a2.set_ylabel("request latency through HAProxy (ms, log)")
        a2.set_title("Request latency during the scale cycles (wrk)")
        a2.legend(fontsize=8)
        a2.grid(alpha=0.3, axis="y")
    if "join" not in r:
        fig.delaxes(a1)
    if wamp:
        a3 = axes[2]
        keys = ["p50", "p99", "max"]
        for k, (key, label, color) in enumerate(MODES):
            lat = r["side_by_side"][key]["wamp"]["calls"]["latency_ms"]
            a3.bar([i + (k - 0.5) * 0.38 for i in range(len(keys))],
                   [max(lat[q] or 0.01, 0.01) for q in keys], 0.38, color=color, label=label)
        a3.set_xticks(range(len(keys)), keys)
        a3.set_yscale("log")
        a3.set_ylabel("WAMP call round trip (ms, log)")
        a3.set_title("WAMP calls during the scale cycles (autobahn)")
        a3.legend(fontsize=8)
        a3.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_scale(scale: list[dict[str, Any]], path: Path) -> Path:
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in scale:
        pts = [(t, v["up"]) for t, v in s["stage_timeline"] if isinstance(v, dict)]
        a1.plot([t for t, _ in pts], [v for _, v in pts], label=f"{s['members']} members "
                + (f"(all UP after {s['storm_to_all_up_s']:.1f} s)"
                   if s.get("storm_to_all_up_s") is not None else "(not all UP)"))
        us = [(t, v) for t, v in s["agent_usage_timeline"] if isinstance(v, dict)]
        a2.plot([t for t, _ in us], [v["cpu_pct"] for _, v in us],
                label=f"{s['members']} members")
    a1.set_xlabel("seconds since the storm started")
    a1.set_ylabel("servers UP in HAProxy")
    a1.set_title("Join storm: every member asked to join at once")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a2.set_xlabel("seconds since the storm started")
    a2.set_ylabel("lbsync agent CPU (% of one core)")
    a2.set_title("lbsync agent CPU: at rest, storm, at rest")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_realm(rm: dict[str, Any], path: Path) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    (a1, a2), (a3, a4) = axes
    lat = rm["latency"]
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for (key, label, _), color in zip(REALM_SERIES, colors, strict=True):
        xs = sorted(lat["samples_ms"][key])
        if xs:
            a1.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], color=color,
                    label=f"{label}: p50 {lat[key]['p50']:.2f} ms, p99 {lat[key]['p99']:.2f} ms")
    a1.set_xscale("log")
    a1.set_xlabel("round trip (ms, log)")
    a1.set_ylabel("fraction")
    a1.set_title(f"Same node vs across nodes, 3 nodes at rest ({lat['n_per_series']} per series)")
    a1.legend(fontsize=8, loc="lower right")
    a1.grid(alpha=0.3)

    cy = rm["cycles"]
    tl = cy["timeline"]
    secs = [i + 0.5 for i in range(len(tl["received_staying"]))]
    for k, sc in enumerate(cy["scales"]):
        a2.axvspan(sc["t0"], sc["t1"], color="tab:green" if sc["to"] == 5 else "tab:purple",
                   alpha=0.15, label=("lbsync scale 5 (3 → 5)" if sc["to"] == 5
                                      else "lbsync scale 3 (5 → 3)") if k < 2 else None)
    a2.plot(secs, tl["received_staying"], color="tab:blue", lw=1.2,
            label="events received / s, staying subscribers")
    a2.plot(secs, [2 * x for x in tl["published"]], color="black", lw=0.8, ls=":",
            label="events expected / s (published × 2)")
    fails = [secs[i] for i, n in enumerate(tl["calls_failed"]) if n]
    if fails:
        a2.plot(fails, [0] * len(fails), "v", color="red", ms=8, clip_on=False,
                label=f"failed calls ({cy['calls']['failed']})")
    a2.set_ylim(bottom=0, top=max([1, *tl["received_staying"], *tl["published"]]) * 3.2)
    a2.set_xlabel("seconds since the load started")
    a2.set_ylabel("events / s")
    b2 = a2.twinx()
    for key, label, color in (("call_p50_ms", "call across nodes, p50 per second", "tab:orange"),
                              ("event_p50_ms", "event, p50 per second", "tab:red")):
        pts = [(x, v) for x, v in zip(secs, tl[key], strict=True) if v is not None]
        b2.plot([x for x, _ in pts], [v for _, v in pts], color=color, lw=1, label=label)
    b2.set_yscale("log")
    vals = [v for key in ("call_p50_ms", "event_p50_ms") for v in tl[key] if v]
    if vals:  # the latencies in the lower part, the legend above them
        b2.set_ylim(min(vals) / 1.5, max(vals) * 40)
    b2.set_ylabel("latency (ms, log)")
    t = cy["staying_total"]
    a2.set_title(f"Scale cycles 3 → 5 → 3: {t['lost']} lost, {t['duplicated']} duplicated of "
                 f"{t['expected']} events; {cy['calls']['failed']} calls failed")
    h1, l1 = a2.get_legend_handles_labels()
    h2, l2 = b2.get_legend_handles_labels()
    a2.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left", ncol=2)
    a2.grid(alpha=0.3)

    rows = [r for r in rm["n_squared"]["rows"] if r["ok"]]
    ns = [r["n"] for r in rows]
    a3.bar(ns, [r["links_total"] for r in rows], color="tab:gray", alpha=0.5,
           width=0.9, label="router links n(n-1)")
    for n, r in zip(ns, rows, strict=True):
        a3.annotate(f"{r['links_total']}", (n, r["links_total"]), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    a3.set_ylim(0, max([1, *(r["links_total"] for r in rows)]) * 1.25)
    a3.set_xlabel("edge nodes")
    a3.set_ylabel("router links")
    a3.set_xticks(ns)
    b3 = a3.twinx()
    b3.plot(ns, [r["up_to_links_check_ok_s"] for r in rows], "o-", color="tab:blue",
            label="lbsync up → links --check passes (s)")
    b3.plot(ns, [r["up_to_all_up_in_haproxy_s"] for r in rows], "s--", color="tab:cyan",
            label="lbsync up → all UP in HAProxy (s)")
    b3.set_ylabel("seconds")
    b3.set_ylim(bottom=0)
    h1, l1 = a3.get_legend_handles_labels()
    h2, l2 = b3.get_legend_handles_labels()
    a3.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    a3.set_title("Full mesh: links and start time by cluster size")
    a3.grid(alpha=0.3, axis="y")

    a4.plot(ns, [r["router_rss_mb"]["median"] for r in rows], "o-", color="tab:blue",
            label="router worker RSS (median)")
    a4.plot(ns, [r["node_crossbar_rss_mb"]["median"] for r in rows], "s-", color="tab:purple",
            label="one node's Crossbar RSS (3 processes)")
    a4.plot(ns, [r["cluster_rss_mb"] for r in rows], "^-", color="black",
            label="whole cluster RSS")
    a4.set_ylim(0, max([1.0, *(r["cluster_rss_mb"] for r in rows)]) * 1.45)
    if rows:
        last = rows[-1]
        for key, color, dy in (("router_rss_mb", "tab:blue", -4),
                               ("node_crossbar_rss_mb", "tab:purple", 4)):
            a4.annotate(f"{last[key]['median']:.0f} MiB", (last["n"], last[key]["median"]),
                        ha="right", va="bottom" if dy > 0 else "top", fontsize=8, color=color,
                        xytext=(-6, dy), textcoords="offset points")
    a4.set_xlabel("edge nodes")
    a4.set_ylabel("RSS (MiB)")
    a4.set_xticks(ns)
    b4 = a4.twinx()
    b4.plot(ns, [r["router_cpu_pct"]["median"] for r in rows], "o:", color="tab:red",
            label="router CPU at rest, median (%)")
    b4.plot(ns, [r["cluster_cpu_pct"] for r in rows], "^:", color="tab:orange",
            label="whole cluster CPU at rest (%)")
    b4.set_ylabel("CPU (% of one core)")
    b4.set_ylim(0, max([1.0, *(r["cluster_cpu_pct"] for r in rows)]) * 1.45)
    h1, l1 = a4.get_legend_handles_labels()
    h2, l2 = b4.get_legend_handles_labels()
    a4.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    a4.set_title("Memory and CPU at rest by cluster size")
    a4.grid(alpha=0.3)
    fig.suptitle("One WAMP realm across the fleet: router links between the edge nodes "
                 "(real local cluster, autobahn clients straight to the nodes)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
