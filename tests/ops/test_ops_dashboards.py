"""The shipped Grafana dashboard and Prometheus alert rules (docs/ops/) parse, and every
metric they reference exists in a running gateway's /metrics."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from ops_scrape import families

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"
METRIC = re.compile(r"\bsyncline_[a-z0-9_]+")


def _dashboard_exprs() -> list[str]:
    dash = json.loads((OPS / "grafana-syncline.json").read_text())
    assert dash["panels"], "the dashboard has panels"
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert all(p.get("title") for p in dash["panels"])
    return exprs


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((OPS / "alerts.yml").read_text())
    exprs = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["labels"]["severity"], rule
            exprs.append(str(rule["expr"]))
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    # The four the operations issue asks for.
    assert {"SynclineConsumerLagHigh", "SynclineDeadLetterGrowing", "SynclineRedisDown",
            "SynclineStoreLatencyHigh"} <= names
    return exprs


def test_dashboard_and_alerts_reference_only_metrics_that_exist(gateway):
    srv = gateway()
    exposed = families(srv.url)
    referenced = {name for expr in _dashboard_exprs() + _alert_exprs() for name in METRIC.findall(expr)}
    assert referenced, "the files reference metrics"
    assert any(m.startswith("syncline_consumer_lag") for m in referenced), "the bus lag is on the dashboard"
    assert sorted(referenced - exposed) == []
