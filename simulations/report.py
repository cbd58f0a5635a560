"""The run report: markdown plus PNG plots (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .checkers import summarize

if TYPE_CHECKING:
    from .sim import Result


def _percentile(xs: list[int], q: float) -> int:
    if not xs:
        return 0
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1)))]


def write_report(result: Result, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    m = result.metrics
    conv = m.get("convergence_ms", [])
    plots = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(conv or [0], bins=40)
    ax.set(title="convergence time per op (last replica)", xlabel="ms", ylabel="ops")
    fig.tight_layout()
    fig.savefig(out_dir / "convergence.png")
    plt.close(fig)
    plots.append("convergence.png")

    qd = m.get("queue_depth", [])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([t / 1000 for t, _ in qd], [d for _, d in qd])
    ax.set(title="queued ops over time (all clients)", xlabel="virtual s", ylabel="ops")
    fig.tight_layout()
    fig.savefig(out_dir / "queue_depth.png")
    plt.close(fig)
    plots.append("queue_depth.png")

    outcomes = m.get("outcomes", {})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = sorted(outcomes)
    kinds = sorted({k for v in outcomes.values() for k in v})
    bottom = [0] * len(names)
    for k in kinds:
        vals = [outcomes[n].get(k, 0) for n in names]
        ax.bar(names, vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set(title="op outcomes per strategy", ylabel="ops")
    if kinds:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "conflicts.png")
    plt.close(fig)
    plots.append("conflicts.png")

    mps = m.get("messages_per_s", {})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    secs = sorted(mps)
    ax.plot(secs, [mps[s] for s in secs])
    ax.set(title="messages delivered per virtual second", xlabel="virtual s", ylabel="messages")
    fig.tight_layout()
    fig.savefig(out_dir / "messages.png")
    plt.close(fig)
    plots.append("messages.png")

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
    lines += ["", "## Violations", ""]
    if result.violations:
        lines += [f"- {k}: {n}" for k, n in summarize(result.violations).items()]
        lines += ["", "```", *[str(v) for v in result.violations[:20]], "```"]
    else:
        lines.append("none")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
