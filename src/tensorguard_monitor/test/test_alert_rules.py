"""The shipped Prometheus alert rules parse and only reference metrics the dashboard exposes."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from tensorguard_monitor.metrics import METRICS

RULES = Path(__file__).resolve().parents[1] / 'prometheus' / 'alerts.yaml'
HISTOGRAM_SUFFIXES = ('_bucket', '_sum', '_count')
REQUIRED_ALERTS = {'TensorGuardPrivacyBudgetNearlyExhausted', 'TensorGuardRoundsFailingQuorum',
                   'TensorGuardRejectionSpike'}


def exposed(name: str) -> bool:
    """Whether `name` is a scraped sample name: a metric or a histogram's series."""
    return name in METRICS or any(name.endswith(s) and name.removesuffix(s) in METRICS for s in HISTOGRAM_SUFFIXES)


def test_alert_rules_parse_and_reference_existing_metrics():
    groups = yaml.safe_load(RULES.read_text())['groups']
    rules = [rule for group in groups for rule in group['rules']]
    assert REQUIRED_ALERTS <= {rule['alert'] for rule in rules}
    for rule in rules:
        assert set(rule) <= {'alert', 'expr', 'for', 'labels', 'annotations'}, rule['alert']
        assert rule['labels']['severity'] in ('warning', 'critical')
        assert rule['annotations']['summary']
        referenced = set(re.findall(r'\btensorguard_[a-z_]+\b', rule['expr']))
        assert referenced, rule['alert']
        assert [name for name in referenced if not exposed(name)] == [], rule['alert']
        assert rule['expr'].count('(') == rule['expr'].count(')'), rule['alert']
        if 'for' in rule:
            assert re.fullmatch(r'\d+[smh]', rule['for'])


def test_the_outcome_and_label_values_used_by_rules_exist():
    text = RULES.read_text()
    assert set(re.findall(r'outcome="(\w+)"', text)) <= {'aggregated', 'failed', 'expired'}
    assert set(re.findall(r'by \((\w+)\)', text)) <= {'reason', 'robot', 'name'}
