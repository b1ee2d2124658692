#!/usr/bin/env bash
# Checks the monitoring files in ops/: the Grafana dashboard is JSON with a query on every
# panel, and the Prometheus alert rules are well-formed rule groups (with `promtool check rules`
# too when promtool is installed). That every vmpipe_* metric they name is exported by a real
# ingest or worker is checked by the end-to-end test
# `observability::fresh_services_export_every_metric_at_zero_with_help_and_the_ops_files_use_only_them`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import json, sys
import yaml

problems = []
dashboard = json.load(open("ops/grafana/vmpipe.json"))
for panel in dashboard["panels"]:
    if panel["type"] == "row":
        continue
    if not any(t.get("expr", "").strip() for t in panel.get("targets", [])):
        problems.append(f"dashboard panel {panel.get('title')!r} has no query")

rules = yaml.safe_load(open("ops/prometheus/alerts.yml"))
names = set()
for group in rules["groups"]:
    for rule in group["rules"]:
        name = rule.get("alert")
        if not name or not str(rule.get("expr", "")).strip():
            problems.append(f"group {group['name']}: a rule without alert name or expr: {rule}")
        if name in names:
            problems.append(f"alert {name} defined twice")
        names.add(name)
        if set(rule) - {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}:
            problems.append(f"alert {name}: unknown keys {set(rule)}")
        if "severity" not in rule.get("labels", {}):
            problems.append(f"alert {name}: no severity label")
if problems:
    sys.exit("\n".join(problems))
print(f"ops/: {len(dashboard['panels'])} dashboard panels, {len(names)} alert rules")
PY
if command -v promtool >/dev/null; then
  promtool check rules ops/prometheus/alerts.yml
else
  echo "promtool not installed: alert expressions not checked by Prometheus itself" >&2
fi
