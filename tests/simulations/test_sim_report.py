"""The simulation report: every plot has data, every plot marks when faults held, and
the progress line ends at the virtual time the report states."""
from __future__ import annotations

import json

import pytest

from syncline.simulations import scenarios
from syncline.simulations.report import FAULT_GID, fault_spans, figures, write_report
from syncline.simulations.sim import Params, run


def _plotted_points(fig) -> int:
    ax = fig.axes[0]
    points = sum(len(line.get_xdata()) for line in ax.lines if not str(line.get_gid() or "").startswith(FAULT_GID))
    return points + sum(len(c.get_offsets()) for c in ax.collections)


def _fault_kinds(fig) -> set[str]:
    return {str(a.get_gid())[len(FAULT_GID):] for a in fig.axes[0].get_children()
            if str(a.get_gid() or "").startswith(FAULT_GID)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def flash_crowd():
    result, _ = run(scenarios.get("flash-crowd"), Params(clients=30, seed=1))
    assert result.ok
    return result


def test_flash_crowd_plots_show_the_crowd(flash_crowd, tmp_path):
    figs = figures(flash_crowd)
    # The room workload creates no ops: its plots are the room's, not empty op charts.
    assert {"room_members", "room_messages", "messages"} <= set(figs)
    assert not {"convergence", "conflicts", "queue_depth"} & set(figs)
    for name, fig in figs.items():
        assert _plotted_points(fig) > 1, f"{name} is empty"
    members = figs["room_members"].axes[0].lines[0].get_ydata()
    assert max(members) == 30  # the whole crowd joined

    write_report(flash_crowd, tmp_path)
    data = json.loads((tmp_path / "plots.json").read_text())
    assert data["plots"]["room_messages"]["data"]["delivered"]
    assert sum(n for _, n in data["plots"]["room_messages"]["data"]["delivered"]) == flash_crowd.metrics["room_msgs"]
    assert (tmp_path / "room_members.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "![room_members.png](room_members.png)" in report and "conflicts.png" not in report


def test_every_plot_marks_the_faults(tmp_path):
    result, _ = run(scenarios.get("offline-records"), Params(clients=8, seed=3, duration_ms=6_000))
    windows = result.metrics["fault_windows"]
    injected = {w[0] for w in windows}
    assert {"partition", "offline", "client crash", "server restart"} <= injected
    figs = figures(result)
    assert {"convergence", "queue_depth", "conflicts", "messages"} <= set(figs)
    for name, fig in figs.items():
        assert _fault_kinds(fig) == injected, name
        legend = fig.axes[0].get_legend()
        assert legend is not None and injected <= {t.get_text() for t in legend.get_texts()}, name
    # The spans drawn are the windows' (merged per kind), in virtual seconds.
    spans = fault_spans(windows)
    assert spans["server restart"][0][0] == spans["server restart"][0][1]
    assert all(s < e for s, e in spans["partition"])
    write_report(result, tmp_path)
    faults = json.loads((tmp_path / "plots.json").read_text())["faults"]
    assert {f["kind"] for f in faults} == injected
    assert "| partition |" in (tmp_path / "report.md").read_text()


def test_fault_spans_merge_overlaps_per_kind():
    spans = fault_spans([("offline", 1000, 5000, 1), ("offline", 2000, 7000, 1), ("offline", 9000, 9500, 1),
                         ("server restart", 3000, 3000, 8), ("server restart", 3000, 3000, 8)])
    assert spans == {"offline": [(1.0, 7.0), (9.0, 9.5)], "server restart": [(3.0, 3.0), (3.0, 3.0)]}


def test_the_progress_line_ends_at_the_reported_virtual_time(flash_crowd):
    """The progress callback's last word is the run's virtual end (the report's), not the
    deadline the run had to beat (duration + quiescence allowance, 190 s here)."""
    seen: list[tuple[int, int]] = []
    result, _ = run(scenarios.get("flash-crowd"), Params(clients=30, seed=1),
                    progress=lambda t, total: seen.append((t, total)))
    assert result.virtual_ms == flash_crowd.virtual_ms < 30_000
    assert seen[-1] == (result.virtual_ms, result.virtual_ms)
    assert all(t <= result.virtual_ms for t, _ in seen)


def test_simulate_prints_the_same_virtual_time_on_its_progress_line_and_in_its_report(tmp_path):
    import re

    from click.testing import CliRunner

    from syncline.cli import main

    out = CliRunner().invoke(main, ["simulate", "--scenario", "flash-crowd", "--clients", "20", "--seed", "1",
                                    "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    progress = re.findall(r"t=(\d+\.\d)s", out.output)
    (reported,) = re.findall(r"virtual time \(s\)\s*│\s*(\d+\.\d)", out.output)
    assert progress and progress[-1] == reported
    assert f"virtual {int(float(reported) * 1000)} ms" in (tmp_path / "report.md").read_text()


def test_the_convergence_plot_is_bounded(flash_crowd):
    """A thousand clients make 100,000 ops: the plot (and plots.json) keeps SCATTER_MAX points."""
    import dataclasses

    from syncline.simulations import report

    many = [(i, i % 997) for i in range(3 * report.SCATTER_MAX + 5)]
    big = dataclasses.replace(flash_crowd, metrics={**flash_crowd.metrics, "convergence_by_creation": many})
    fig = figures(big)["convergence"]
    assert 0 < _plotted_points(fig) <= report.SCATTER_MAX
    assert "every 4th op" in fig.axes[0].get_title()
