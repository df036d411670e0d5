"""The shipped Prometheus rules and Grafana dashboard (deploy/): valid, and naming only
metrics anchord exports (a real scrape checks the names in e2e/test_observability.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "anchord-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "anchord-dashboard.json"


def deploy_metric_names() -> set[str]:
    """Every ``anchord_*`` series the rules and the dashboard query."""
    text = RULES.read_text() + DASHBOARD.read_text()
    return set(re.findall(r"\banchord_[a-z0-9_]+", text))


def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout, out.stdout


def test_the_dashboard_is_grafana_json_with_prometheus_queries() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert exprs
    assert all("anchord_" in e for e in exprs)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
