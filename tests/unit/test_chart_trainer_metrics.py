"""The chart's optional trainer monitoring: a PodMonitor that selects the trainer pods the
operator builds (by their real labels and container port), and a Grafana dashboard whose
queries use only series the trainer serves."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from vlm_operator.builders.job import trainer_workload
from vlm_trainer.observe import _GAUGES

from tests.unit.chart import CHART, find, one, template
from tests.unit.manifests import SHAPE, TJ

pytestmark = pytest.mark.unit

ON = {
    "metrics": {
        "trainerPodMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "grafanaDashboard": {"enabled": True},
    }
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return template(tmp_path_factory.mktemp("trainer-metrics"), ON)


def test_off_by_default(tmp_path) -> None:
    docs = template(tmp_path)
    assert not find(docs, "PodMonitor") and not find(docs, "ConfigMap")


def test_pod_monitor_selects_the_trainer_pods_metrics_port(rendered) -> None:
    monitor = one(rendered, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    job = trainer_workload(TJ, SHAPE, "pvc://c", "img:1")[-1]
    pod = job["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    container = pod["spec"]["containers"][0]
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert str(declared[port]) == env["VLM_TRAINER_METRICS_PORT"]


def test_dashboard_queries_only_served_series(rendered) -> None:
    cm = one(rendered, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["vlm-trainer.json"])
    assert dash == json.loads((CHART / "dashboards" / "vlm-trainer.json").read_text())
    served = {name for name, _ in _GAUGES.values()} | {"vlm_trainer_eval"}
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"vlm_trainer_[a-z_]+", e)}
    assert used and used <= served
    assert {"vlm_trainer_loss", "vlm_trainer_step", "vlm_trainer_eval"} <= used
