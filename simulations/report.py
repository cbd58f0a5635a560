"""The run report: markdown plus PNG plots (matplotlib, Agg backend), and the plotted
series as JSON beside them (``plots.json``) for anyone who wants to redraw or compare.

Every plot has virtual time on its x axis, so every plot can show when the faults held:
partitions, clients offline, client crashes, consumer crashes as shaded spans, server
restarts as dashed lines, each kind in its own colour and named once in the legend. A
plot with nothing to show for a workload (no ops in a room workload, no room in a
records workload) is not drawn, and the report says so, rather than an empty chart.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkers import summarize

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .sim import Result

# One colour per fault kind, the same on every plot.
FAULT_COLOURS = {
    "partition": "tab:red",
    "offline": "tab:orange",
    "client crash": "tab:purple",
    "consumer crash": "tab:brown",
    "server restart": "black",
}
SCATTER_MAX = 20_000  # points on the convergence plot (and in plots.json)
FAULT_GID = "fault:"  # gid prefix of the artists that mark faults (tests look for them)


def _percentile(xs: list[int], q: float) -> int:
    if not xs:
        return 0
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1)))]


def fault_spans(windows: list) -> dict[str, list[tuple[float, float]]]:
    """Fault windows ``(kind, start_ms, end_ms, clients)`` as spans in virtual seconds per
    kind, overlapping ones of a kind merged (a hundred clients offline at once are one span)."""
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for kind, start, end, _ in sorted(windows, key=lambda w: (w[0], w[1])):
        spans = by_kind.setdefault(kind, [])
        s, e = start / 1000, end / 1000
        if spans and e > s and spans[-1][1] > spans[-1][0] and s <= spans[-1][1]:  # (instants stay apart)
            spans[-1] = (spans[-1][0], max(spans[-1][1], e))
        else:
            spans.append((s, e))
    return by_kind


def mark_faults(ax: Axes, spans: dict[str, list[tuple[float, float]]]) -> int:
    """Shade each fault span (a dashed line for an instant) and name each kind once in the
    legend; returns how many artists were drawn."""
    drawn = 0
    for kind in sorted(spans):
        colour = FAULT_COLOURS.get(kind, "tab:gray")
        for k, (s, e) in enumerate(spans[kind]):
            label = kind if k == 0 else None
            if e > s:
                ax.axvspan(s, e, color=colour, alpha=0.15, label=label, gid=FAULT_GID + kind, zorder=0)
            else:
                ax.axvline(s, color=colour, linestyle="--", linewidth=1, label=label, gid=FAULT_GID + kind)
            drawn += 1
    return drawn


def _series(result: Result) -> dict[str, dict[str, Any]]:
    """What each plot draws: name -> {title, ylabel, kind, data}. Plots without data are left out."""
    m = result.metrics
    out: dict[str, dict[str, Any]] = {}
    conv = m.get("convergence_by_creation") or []
    if conv:
        # A point per op, up to SCATTER_MAX (a thousand clients make 100,000 ops): beyond
        # that every k-th op, in creation order, and the title says so.
        step = -(-len(conv) // SCATTER_MAX)
        title = "convergence time per op, by when it was created" + (f" (every {step}th op)" if step > 1 else "")
        out["convergence"] = {"title": title, "ylabel": "ms", "kind": "scatter",
                              "data": {"ops": [[t / 1000, ms] for t, ms in conv[::step]]}}
    if result.ops_created:
        qd = m.get("queue_depth", [])
        out["queue_depth"] = {"title": "queued ops over time (all clients)", "ylabel": "ops", "kind": "line",
                              "data": {"queued": [[t / 1000, d] for t, d in qd]}}
    per_s = m.get("outcomes_per_s") or {}
    if per_s:
        out["conflicts"] = {"title": "op outcomes per virtual second", "ylabel": "ops", "kind": "line",
                            "data": {k: [[s, n] for s, n in sorted(per_s[k].items())] for k in sorted(per_s)}}
    mps = m.get("messages_per_s") or {}
    if mps:
        out["messages"] = {"title": "messages delivered per virtual second", "ylabel": "messages", "kind": "line",
                           "data": {"messages": [[s, mps[s]] for s in sorted(mps)]}}
    members = m.get("room_members") or []
    if any(n for _, n in members):
        out["room_members"] = {"title": "clients in the room over time", "ylabel": "clients", "kind": "line",
                               "data": {"in the room": [[0, 0]] + [[t / 1000, n] for t, n in members]}}
    room = m.get("room_msgs_per_s") or {}
    if room:
        out["room_messages"] = {"title": "room messages delivered per virtual second", "ylabel": "messages",
                                "kind": "line", "data": {"delivered": [[s, room[s]] for s in sorted(room)]}}
    return out


def figures(result: Result) -> dict[str, Figure]:
    """One matplotlib figure per plot with data, fault windows marked on each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spans = fault_spans(result.metrics.get("fault_windows") or [])
    out: dict[str, Figure] = {}
    for name, plot in _series(result).items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for label, points in plot["data"].items():
            xs = [p[0] for p in points]
            ys = [p[1] for p in points]
            if plot["kind"] == "scatter":
                ax.scatter(xs, ys, s=4, alpha=0.5, label=label)
            else:
                ax.plot(xs, ys, label=label)
        ax.set_ylim(bottom=0)
        marked = mark_faults(ax, spans)
        ax.set(title=plot["title"], xlabel="virtual s", ylabel=plot["ylabel"])
        if marked or len(plot["data"]) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout()
        out[name] = fig
    return out


def write_report(result: Result, out_dir: Path) -> Path:
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    m = result.metrics
    conv = m.get("convergence_ms", [])
    series = _series(result)
    plots = []
    for name, fig in figures(result).items():
        fig.savefig(out_dir / f"{name}.png")
        plt.close(fig)
        plots.append(f"{name}.png")
    windows = [{"kind": k, "start_s": s / 1000, "end_s": e / 1000, "clients": c}
               for k, s, e, c in m.get("fault_windows") or []]
    (out_dir / "plots.json").write_text(json.dumps({"plots": series, "faults": windows}, separators=(",", ":")) + "\n")
    missing = sorted({"convergence", "queue_depth", "conflicts", "messages", "room_members", "room_messages"}
                     - set(series))

    lines = [
        f"# Simulation `{result.scenario}` — seed {result.seed}, {result.clients} clients",
        "",
        f"- result: **{'OK' if result.ok else 'FAILED'}**",
        f"- steps {result.steps}, virtual {result.virtual_ms} ms, wall {result.wall_s:.2f} s",
        f"- events in log {result.events}; ops created {result.ops_created}, acknowledged {result.ops_acked}",
        f"- quiescent at {result.quiesced_at_ms} ms",
        f"- log hash `{result.log_hash}`",
        f"- trace hash `{result.trace_hash}`",
        f"- convergence p50 {_percentile(conv, .5)} ms, p99 {_percentile(conv, .99)} ms, "
        f"max {conv[-1] if conv else 0} ms",
        f"- network {m.get('network')}",
        f"- faults: partitions {m.get('partitions')}, crashes {m.get('crashes')}, server restarts "
        f"{m.get('server_restarts')}, refreshes {m.get('refreshes')}, snapshots {m.get('snapshots')}",
        f"- server {m.get('server')}",
    ]
    if "consumers" in m:
        lines.append(f"- consumer group {m['consumers']}")
    outcomes = m.get("outcomes") or {}
    if outcomes:
        kinds = sorted({k for v in outcomes.values() for k in v})
        lines += ["", "## Op outcomes per strategy", "", "| strategy | " + " | ".join(kinds) + " |",
                  "|---|" + "---:|" * len(kinds)]
        lines += [f"| {s} | " + " | ".join(str(outcomes[s].get(k, 0)) for k in kinds) + " |" for s in sorted(outcomes)]
    lines += ["", "## Faults", ""]
    if windows:
        lines += ["| kind | from (virtual s) | to | clients |", "|---|---:|---:|---:|"]
        lines += [f"| {w['kind']} | {w['start_s']:.1f} | {w['end_s']:.1f} | {w['clients']} |" for w in windows]
    else:
        lines.append("none injected (message loss, duplication and delay spikes aside)")
    lines += ["", "## Violations", ""]
    if result.violations:
        lines += [f"- {k}: {n}" for k, n in summarize(result.violations).items()]
        lines += ["", "```", *[str(v) for v in result.violations[:20]], "```"]
    else:
        lines.append("none")
    lines += ["", "## Plots", "", "Shaded spans and dashed lines mark the faults above; the data is in "
              "`plots.json`.", ""] + [f"![{p}]({p})" for p in plots]
    if missing:
        lines += ["", f"Not drawn (nothing to show in this workload): {', '.join(missing)}."]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
