"""Progress and checkpoints reported to Kubernetes, from inside a TrainerJob pod.

Active only when the operator's environment is present (`VLM_TRAINERJOB_NAME`,
`VLM_TRAINERJOB_NAMESPACE`, `KUBERNETES_SERVICE_HOST`) and only on rank 0; outside Kubernetes
nothing here runs and no cluster is needed. It uses the pod's service-account token, whose Role
(made by the operator) allows exactly: patch this TrainerJob's status, create Checkpoints.

- `status.progress` (step, totalSteps, percent, epoch, loss, tokensPerSecond, etaSeconds,
  updatedAt), at most once every `VLM_PROGRESS_INTERVAL` seconds (default 5) plus at start/end;
- one Checkpoint per saved snapshot, named `<job>-<step-000050|final>`, owned by the TrainerJob,
  with `status.latestCheckpoint` pointing at it. A Checkpoint that exists already (a resumed run
  saving the same step again) is left as it is; one of an earlier job of the same name (another
  UID) is never touched: the new one is named `<job>-<step>-<uid[:8]>` instead;
- before keepLast deletes a snapshot, its Checkpoint is annotated `vlmtrain.dev/pruned` (the
  operator turns it into phase Pruned); one with a promotion requested or done, or marked
  `vlmtrain.dev/in-use-by.<uid>` by the operator (another job's spec.initFrom starts from it),
  keeps its files.

Training never waits for the API server: reports go through `api_sender.ApiSender` (a background
thread; every call with a connect+read timeout and bounded retries; the latest status wins and
is re-sent when the server comes back). The end of the run waits at most
`VLM_REPORT_FLUSH_S` seconds (default 15) for what is still pending.
"""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .api_sender import ApiSender

GROUP, VERSION = "vlmtrain.dev", "v1alpha1"
JOB_LABEL = "vlmtrain.dev/trainer-job"
PRUNED_ANNOTATION = "vlmtrain.dev/pruned"  # the operator then sets phase Pruned
# + a TrainerJob's UID: that job starts from this Checkpoint (operator reconcile/init_from.py).
IN_USE_PREFIX = "vlmtrain.dev/in-use-by."
PROMOTION = ("Promoting", "Promoted")


def enabled() -> bool:
    env = os.environ
    rank0 = env.get("RANK", "0") == "0"
    return rank0 and all(
        env.get(k)
        for k in ("VLM_TRAINERJOB_NAME", "VLM_TRAINERJOB_NAMESPACE", "KUBERNETES_SERVICE_HOST")
    )


def keeps_files(ck: dict[str, Any]) -> str | None:
    """Why keepLast must not delete ``ck``'s files, or None: a promotion requested or done, or
    another job's spec.initFrom depends on it."""
    if ck["spec"].get("promote") or (ck.get("status") or {}).get("phase") in PROMOTION:
        return "promotion"
    users = [
        v
        for k, v in (ck["metadata"].get("annotations") or {}).items()
        if k.startswith(IN_USE_PREFIX)
    ]
    return f"in use by TrainerJob {', '.join(sorted(users))}" if users else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_uids(obj: dict[str, Any]) -> set[str]:
    return {r.get("uid") for r in obj.get("metadata", {}).get("ownerReferences") or []}


def _same_uri(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("spec", {}).get("uri") == b["spec"]["uri"]


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class KubernetesReporter:
    """A `report.Reporter` that writes to the TrainerJob and creates Checkpoints."""

    def __init__(self, api_client=None, **sender_options) -> None:
        """``api_client``: a ``kubernetes.client.ApiClient`` (default: the pod's in-cluster
        config); ``sender_options`` go to ``ApiSender`` (timeouts, retries)."""
        from kubernetes import client, config

        if api_client is None:
            config.load_incluster_config()
        self.api = client.CustomObjectsApi(api_client)
        self.sender = ApiSender(self._patch_call, self._create_call, **sender_options)
        self.flush_s = float(os.environ.get("VLM_REPORT_FLUSH_S", "15"))
        env = os.environ
        self.name, self.ns = env["VLM_TRAINERJOB_NAME"], env["VLM_TRAINERJOB_NAMESPACE"]
        self.uid = env.get("VLM_TRAINERJOB_UID")
        self.checkpoint_uri = env.get("VLM_CHECKPOINT_URI", "").rstrip("/")
        self.base_model = env.get("VLM_BASE_MODEL", "")
        # What a later job's spec.initFrom is checked against: the model this chain started
        # from and its processor (operator/vlm_operator/reconcile/init_from.py).
        self.lineage = {
            f"{GROUP}/{key}": env[var]
            for key, var in (("root-model", "VLM_ROOT_MODEL"), ("processor", "VLM_PROCESSOR"))
            if env.get(var)
        }
        self.interval = float(env.get("VLM_PROGRESS_INTERVAL", "5"))
        self.total_steps = 0
        self.last_sent = 0.0
        self.started = time.monotonic()
        self.first_step: int | None = None

    def _patch_status(self, status: dict[str, Any]) -> None:
        self.sender.put_status(status)  # returns at once; latest wins

    def _patch_call(self, status: dict[str, Any], timeout: tuple[float, float]) -> None:
        self.api.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            self.ns,
            "trainerjobs",
            self.name,
            {"status": status},
            _content_type="application/merge-patch+json",
            _request_timeout=timeout,
        )

    def _create_call(self, body: dict[str, Any], timeout: tuple[float, float]) -> None:
        """Create the Checkpoint (on the sender's thread), then point `latestCheckpoint` at it.

        One of this job's of the same name (a resumed run saving a step again) is kept; one of
        an earlier job under the same name (another UID, not yet garbage-collected, or
        promoted) is left alone and this one gets the UID's first 8 characters as a suffix."""
        from kubernetes.client.rest import ApiException

        name = body["metadata"]["name"]
        for candidate in (name, f"{name}-{(self.uid or '')[:8]}"):
            body = {**body, "metadata": {**body["metadata"], "name": candidate}}
            try:
                self.api.create_namespaced_custom_object(
                    GROUP, VERSION, self.ns, "checkpoints", body, _request_timeout=timeout
                )
                break
            except ApiException as e:
                if e.status != 409:
                    raise
            old = self.api.get_namespaced_custom_object(
                GROUP, VERSION, self.ns, "checkpoints", candidate, _request_timeout=timeout
            )
            # Ours: owned by this UID, or (promoted, so no owner any more) holding our files.
            if not self.uid or self.uid in _owner_uids(old) or _same_uri(old, body):
                break
        else:  # never retried: the names stay taken, and creates go first in the queue
            print(
                f"kube report: Checkpoint names {name} and {candidate} belong to other jobs; "
                "this snapshot gets no Checkpoint",
                file=sys.stderr,
                flush=True,
            )
            return
        self.sender.put_status({"latestCheckpoint": candidate})

    def _progress(self, step: int, m: dict[str, Any]) -> dict[str, Any]:
        p: dict[str, Any] = {"step": step, "updatedAt": _now()}
        if self.total_steps:
            p["totalSteps"] = self.total_steps
            p["percent"] = min(100, int(100 * step / self.total_steps))
            if self.first_step is not None and step > self.first_step:
                per_step = (time.monotonic() - self.started) / (step - self.first_step)
                p["etaSeconds"] = max(0, int(per_step * (self.total_steps - step)))
        for key, api_key in (
            ("epoch", "epoch"),
            ("loss", "loss"),
            ("tokens_per_second", "tokensPerSecond"),
        ):
            if (v := _finite(m.get(key))) is not None:
                p[api_key] = round(v, 6)
        return p

    # -- Reporter events ----------------------------------------------------------------------
    def on_start(self, info: dict[str, Any]) -> None:
        self.total_steps = int(info.get("total_steps") or 0)
        step = int(info.get("resumed_step") or 0)
        self.first_step, self.started = step, time.monotonic()
        self._patch_status({"progress": self._progress(step, {})})
        self.last_sent = time.monotonic()

    def on_step(self, metrics: dict[str, Any]) -> None:
        step = int(metrics.get("step", 0))
        if time.monotonic() - self.last_sent < self.interval and step < self.total_steps:
            return
        self._patch_status({"progress": self._progress(step, metrics)})
        self.last_sent = time.monotonic()

    def on_eval(self, metrics: dict[str, Any]) -> None:
        pass

    def on_checkpoint(self, path: Path, step: int, manifest: dict[str, Any]) -> None:
        ckpt = f"{self.name}-{path.name}"
        metrics = {
            k: round(v, 6)
            for k, val in (manifest.get("metrics") or {}).items()
            if (v := _finite(val)) is not None
        }
        body: dict[str, Any] = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Checkpoint",
            "metadata": {
                "name": ckpt,
                "namespace": self.ns,
                "labels": {JOB_LABEL: self.name},
                "annotations": self.lineage,
            },
            "spec": {
                "trainerJob": self.name,
                "step": step,
                "final": path.name == "final",
                "uri": f"{self.checkpoint_uri}/{path.name}",
                "type": manifest.get("type", "full"),
                "baseModel": self.base_model or manifest.get("base_model", ""),
                **({"metrics": dict(list(metrics.items())[:32])} if metrics else {}),
            },
        }
        if self.uid:
            body["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "TrainerJob",
                    "name": self.name,
                    "uid": self.uid,
                    "controller": False,
                    "blockOwnerDeletion": False,
                }
            ]
        # Sent in order by the background sender; `latestCheckpoint` follows once the name
        # is settled (_create_call).
        self.sender.put_create(body)
        self._patch_status({"progress": self._progress(step, {})})

    def may_prune(self, path: Path) -> bool:
        """Mark this snapshot's Checkpoint pruned before keepLast deletes its files; False (keep
        the files) when ``keeps_files`` says so, or the Checkpoint changed meanwhile (the mark is
        a patch conditional on the resourceVersion that was read: an in-use mark added since
        makes it fail)."""
        from kubernetes.client.rest import ApiException

        ck = self._own_checkpoint(path.name)
        if ck is None:
            return True  # no object points at these files
        if keeps_files(ck):
            return False
        meta = {"resourceVersion": ck["metadata"]["resourceVersion"]}
        meta["annotations"] = {PRUNED_ANNOTATION: _now()}
        try:
            self.api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.ns,
                "checkpoints",
                ck["metadata"]["name"],
                {"metadata": meta},
                _content_type="application/merge-patch+json",
            )
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def _own_checkpoint(self, folder: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        name = f"{self.name}-{folder}"
        for candidate in (name, f"{name}-{(self.uid or '')[:8]}"):
            try:
                ck = self.api.get_namespaced_custom_object(
                    GROUP, VERSION, self.ns, "checkpoints", candidate
                )
            except ApiException as e:
                if e.status == 404:
                    continue
                raise
            # Its files, whoever owns it now (a promoted Checkpoint has no owner any more).
            if ck["spec"].get("uri") == f"{self.checkpoint_uri}/{folder}":
                return ck
        return None

    def on_done(self, summary: dict[str, Any]) -> None:
        step = int(summary.get("step") or self.total_steps)
        self._patch_status({"progress": self._progress(step, summary)})
        self._flush()

    def on_stopped(self, info: dict[str, Any]) -> None:
        step = int(info.get("step") or 0)
        self._patch_status({"progress": self._progress(step, {})})
        self._flush()

    def on_error(self, message: str) -> None:
        print(
            f"trainer error reported in the termination message: {message[:200]}", file=sys.stderr
        )
        self._flush()

    def _flush(self) -> None:
        if not self.sender.flush(self.flush_s):
            print(f"kube report: not all reports sent within {self.flush_s}s", file=sys.stderr)
