"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Supported: any number of replicas, each with its own identity; exactly one holds the Lease and
runs the work queue and the resync (main.py), the others only watch. The holder renews the Lease
every `retry` seconds; a candidate takes it over once it has seen the same record (holder and
renewTime) unchanged for `duration` seconds, measured on its own monotonic clock, so the
replicas' wall clocks need not agree. Every write is a compare-and-swap on the Lease's
resourceVersion (create, or PUT with the version read), so two candidates never both win.

Handover: a killed leader is replaced within `duration + retry` seconds (15 + 2 by default).
A leader that cannot renew for two thirds of `duration` (client-go's renew deadline, before any
candidate may take over), or that finds another holder in the Lease, stops being the leader by
exiting the process (its Deployment restarts it as a candidate): workers cannot be stopped
mid-reconcile, and a process that keeps writing after another replica took over is what this
module exists to prevent. Assumed: the Lease's namespace exists.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.rest import ApiException

from vlm_operator import kube, metrics

log = logging.getLogger("vlm_operator.leader")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        retry: float = 2.0,
    ) -> None:
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration, self.retry = duration, retry
        self._seen: tuple[Any, Any] | None = None  # (holder, renewTime) last observed
        self._seen_at = 0.0  # monotonic time it was first observed
        self._renewed_at = 0.0  # monotonic time of our last successful renewal
        self._usurped = False  # the last round found another replica holding the Lease
        self.leading = False

    def _record(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.duration),
            "renewTime": _now(),
        }

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease afterwards."""
        self._usurped = False
        lease = kube.get("Lease", self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._record() | {"acquireTime": _now(), "leaseTransitions": 0},
            }
            _, created = kube.create(body)
            return created
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"))
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        mine = holder == self.identity
        expired = time.monotonic() - self._seen_at > float(
            spec.get("leaseDurationSeconds") or self.duration
        )
        self._usurped = bool(holder) and not mine
        if holder and not mine and not expired:
            return False
        new = self._record()
        if not mine:
            new |= {"acquireTime": _now(), "leaseTransitions": spec.get("leaseTransitions", 0) + 1}
        lease["spec"] = spec | new
        kube.replace(lease)  # 409 when someone else wrote it since our read
        return True

    def _round(self) -> None:
        try:
            held = self.try_acquire_or_renew()
        except ApiException as e:
            if e.status != 409:
                log.warning("lease %s/%s: %s", self.namespace, self.name, e.reason)
            held = False
        except Exception as e:  # the API server unreachable: keep trying until the deadline
            log.warning("lease %s/%s: %s", self.namespace, self.name, e)
            held = False
        if held:
            self._renewed_at = time.monotonic()

    def run(self, on_started: Callable[[], None], on_lost: Callable[[], None]) -> None:
        """Block: campaign until elected, call `on_started`, renew; `on_lost` if renewal fails."""
        while True:
            self._round()
            now = time.monotonic()
            if not self.leading and now - self._renewed_at < 0.5:
                self.leading = True
                metrics.LEADER.set(1)
                log.info("lease %s/%s acquired by %s", self.namespace, self.name, self.identity)
                on_started()
            elif self.leading and (now - self._renewed_at > self.duration * 2 / 3 or self._usurped):
                metrics.LEADER.set(0)
                log.error("lease %s/%s lost by %s", self.namespace, self.name, self.identity)
                on_lost()
                return
            time.sleep(self.retry)


def start(namespace: str, name: str, duration: float, on_started: Callable[[], None]) -> None:
    """Campaign in a daemon thread; losing the Lease ends the process (see the module doc)."""
    identity = f"{os.environ.get('HOSTNAME') or os.uname().nodename}_{os.getpid()}"
    elector = LeaderElector(namespace, name, identity, duration=duration)

    def lost() -> None:
        os._exit(1)

    threading.Thread(
        target=elector.run, args=(on_started, lost), name="leader", daemon=True
    ).start()
