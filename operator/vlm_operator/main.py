"""The kopf entry point: the only place with @kopf decorators.

Every handler only enqueues the key of the object to reconcile (see `workqueue`); the reconcilers
in `reconcile/` do the work. Watched: our three kinds, and the batch Jobs and trainer pods the
operator created (label `app.kubernetes.io/managed-by=vlm-trainer-operator`), which map back to
their TrainerJob or Checkpoint. A resync thread re-enqueues every object periodically, so nothing
depends on seeing one particular event. The operator adds no finalizers to anyone's objects:
deleting a TrainerJob never hangs on the operator, and owner references clean up its children.

With leader election (`--leader-elect`, see `leader`), every replica watches and enqueues, but
only the Lease holder starts the queue's workers and the resync; a standby replica writes
nothing. kopf itself runs standalone in each replica: its event handlers only enqueue.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import kopf

from vlm_operator import kube, leader, metrics
from vlm_operator.api import GROUP, VERSION
from vlm_operator.builders.labels import JOB_LABEL, MANAGED_BY, TASK_LABEL
from vlm_operator.reconcile.checkpoint import reconcile_checkpoint
from vlm_operator.reconcile.job import jobs_awaiting_selection, reconcile_job
from vlm_operator.reconcile.shape import reconcile_shape
from vlm_operator.settings import Settings, configure_kopf
from vlm_operator.workqueue import Key, WorkQueue

log = logging.getLogger("vlm_operator")
SETTINGS = Settings.from_env()
OURS = {"app.kubernetes.io/managed-by": MANAGED_BY}


def dispatch(key: Key) -> list[Key]:
    kind, ns, name = key
    if not SETTINGS.watches(ns):
        return []  # another operator's namespace (found through a cluster-wide list)
    if kind == "TrainingShape":
        shape = kube.get("TrainingShape", None, name)
        return [] if shape is None else [("TrainerJob", n, j) for n, j in reconcile_shape(shape)]
    if kind == "TrainerJob":
        return [("Checkpoint", n, c) for n, c in reconcile_job(ns or "", name, SETTINGS)]
    reconcile_checkpoint(ns or "", name, SETTINGS)
    return [("TrainerJob", ns, j) for j in jobs_awaiting_selection(ns or "", name)]


QUEUE = WorkQueue(dispatch)
_stop = threading.Event()


#: What kopf itself calls for the watches below and its own bookkeeping, on top of
#: kube.ACCESS: (apiGroup, resource, verb). tests/unit/test_chart_rbac.py adds the watched
#: resources (list, watch) from kopf's registry and compares the sum with the ClusterRole.
KOPF_ACCESS: frozenset[tuple[str, str, str]] = frozenset(
    {
        # Discovery of the served resources and, for namespace globs, of the namespaces.
        *(
            ("apiextensions.k8s.io", "customresourcedefinitions", v)
            for v in ("get", "list", "watch")
        ),
        *(("", "namespaces", v) for v in ("get", "list", "watch")),
        # kopf posts Events about handler failures (core API; events.k8s.io on newer kopf).
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
    }
)


def _resync_once() -> None:
    try:
        for kind in ("TrainingShape", "TrainerJob", "Checkpoint"):
            for obj in kube.list_objects(kind):
                QUEUE.add((kind, obj["metadata"].get("namespace"), obj["metadata"]["name"]))
    except Exception as e:
        log.warning("resync failed: %s", e)


def _resync() -> None:
    _resync_once()  # a new leader catches up on everything at once
    while not _stop.wait(SETTINGS.resync_seconds):
        _resync_once()


def _activate() -> None:
    """Start reconciling: at startup, or once this replica holds the leader Lease."""
    metrics.LEADER.set(1)
    QUEUE.start()
    threading.Thread(target=_resync, name="resync", daemon=True).start()


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure_kopf(settings)
    metrics.serve(int(os.environ.get("VLM_METRICS_PORT", "9090")))
    if SETTINGS.leader_lease:
        ns, _, name = SETTINGS.leader_lease.partition("/")
        leader.start(ns, name, SETTINGS.lease_seconds, _activate)
    else:
        _activate()
    log.info(
        "vlm-operator started: trainer image %s, checkpoints %s, models %s",
        SETTINGS.trainer_image,
        SETTINGS.checkpoint_storage,
        SETTINGS.model_storage,
    )


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    _stop.set()
    QUEUE.stop()


@kopf.on.event(GROUP, VERSION, "trainingshapes")
def shape_event(name: str, **_: Any) -> None:
    QUEUE.add(("TrainingShape", None, name))


@kopf.on.event(GROUP, VERSION, "trainerjobs")
def trainer_job_event(namespace: str, name: str, **_: Any) -> None:
    QUEUE.add(("TrainerJob", namespace, name))


@kopf.on.event(GROUP, VERSION, "checkpoints")
def checkpoint_event(namespace: str, name: str, **_: Any) -> None:
    QUEUE.add(("Checkpoint", namespace, name))


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
def child_job_event(namespace: str, meta: kopf.Meta, **_: Any) -> None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            QUEUE.add((ref["kind"], namespace, ref["name"]))


@kopf.on.event("", "v1", "pods", labels=OURS | {TASK_LABEL: "train"})
def trainer_pod_event(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    QUEUE.add(("TrainerJob", namespace, labels[JOB_LABEL]))
