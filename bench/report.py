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
        out += ["", "## Scale: join storm (all Serf agents started at once)", "",
                "| members | storm → all UP | N-server plan: Runtime API batch | agent restart → "
                "all UP | agent CPU idle (0 / N members) | agent CPU in storm (mean / max) | "
                "agent RSS max |", "|---|---|---|---|---|---|---|"]
        for s in r["scale"]:
            ap, i0, st, i1 = (s["apply_plan"], s["agent_idle_0_members"], s["agent_storm"],
                              s["agent_idle_n_members"])
            out.append(
                f"| {s['members']} | {s['storm_to_all_up_s']:.2f} s | "
                f"{_f(ap['runtime_batch_ms'], 1)} ms ({ap['batch_size']} servers) | "
                f"{ap['agent_start_to_all_up_s']:.2f} s | {i0.get('cpu_pct_mean')} % / "
                f"{i1.get('cpu_pct_mean')} % | {st.get('cpu_pct_mean')} % / "
                f"{st.get('cpu_pct_max')} % | "
                f"{max(i0.get('rss_mb_max', 0), st.get('rss_mb_max', 0), i1.get('rss_mb_max', 0))}"
                " MB |")
        out += ["", "CPU % is of one core (psutil), sampled every 0.5 s."]
    out += ["", "Plots: " + ", ".join(f"![{p.stem}]({p.name})" for p in plots), ""]
    return "\n".join(out)


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
        pts = [(t, v) for t, v in s["up_timeline"] if isinstance(v, int)]
        a1.plot([t for t, _ in pts], [v for _, v in pts], label=f"{s['members']} members "
                f"(all UP after {s['storm_to_all_up_s']:.1f} s)")
        us = [(t, v) for t, v in s["agent_usage_timeline"] if isinstance(v, dict)]
        a2.plot([t for t, _ in us], [v["cpu_pct"] for _, v in us],
                label=f"{s['members']} members")
    a1.set_xlabel("seconds since the storm started")
    a1.set_ylabel("servers UP in HAProxy")
    a1.set_title("Join storm: all Serf agents started at once")
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
