"""Operator settings: what the Helm chart passes as environment, and kopf's own settings.

Supported environment (all optional): `VLM_TRAINER_IMAGE` (the default trainer image),
`VLM_CHECKPOINT_STORAGE` (default checkpoint location, `pvc://claim[/path]` or `file:///path`),
`VLM_MODEL_STORAGE` (where promoted models go), `VLM_LOG_FORMAT` (`text` or `json`),
`VLM_RESYNC_SECONDS` (how often every TrainerJob is re-reconciled as a safety net),
`VLM_WATCH_NAMESPACES` (comma-separated namespace globs; empty = all; set by `--namespace`),
`VLM_LEADER_LEASE` (`namespace/name` of the leader-election Lease; empty = no election, this
process is always active; set by `--leader-elect`), `VLM_LEASE_SECONDS` (its duration),
`VLM_NETWORK_POLICY` (`true`: every TrainerJob gets a NetworkPolicy, see builders.network).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from fnmatch import fnmatch

import kopf

#: Annotation prefix for kopf's progress and diff-base storage: our group, not kopf's default,
#: so the objects carry no third-party annotation names.
ANNOTATION_PREFIX = "vlmtrain.dev"
DEFAULT_TRAINER_IMAGE = "vlmtrain/vlm-trainer:0.1.0"


@dataclass(frozen=True)
class Settings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    checkpoint_storage: str = "pvc://vlm-checkpoints"
    model_storage: str = "pvc://vlm-models/models"
    log_format: str = "text"
    resync_seconds: float = 30.0
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    leader_lease: str = ""
    lease_seconds: float = 15.0
    network_policy: bool = False

    def watches(self, namespace: str | None) -> bool:
        """Whether objects in `namespace` are this operator's (cluster-scoped: always)."""
        return (
            not namespace
            or not self.namespaces
            or any(fnmatch(namespace, p) for p in self.namespaces)
        )

    @classmethod
    def from_env(cls) -> Settings:
        e = os.environ
        return cls(
            trainer_image=e.get("VLM_TRAINER_IMAGE", cls.trainer_image),
            checkpoint_storage=e.get("VLM_CHECKPOINT_STORAGE", cls.checkpoint_storage).rstrip("/"),
            model_storage=e.get("VLM_MODEL_STORAGE", cls.model_storage).rstrip("/"),
            log_format=e.get("VLM_LOG_FORMAT", cls.log_format),
            resync_seconds=float(e.get("VLM_RESYNC_SECONDS", cls.resync_seconds)),
            namespaces=tuple(n for n in e.get("VLM_WATCH_NAMESPACES", "").split(",") if n),
            leader_lease=e.get("VLM_LEADER_LEASE", ""),
            lease_seconds=float(e.get("VLM_LEASE_SECONDS", cls.lease_seconds)),
            network_policy=e.get("VLM_NETWORK_POLICY", "").lower() == "true",
        )


def configure_kopf(s: kopf.OperatorSettings) -> None:
    """Annotation-based progress storage, bounded retries with backoff, quiet event posting."""
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    s.persistence.finalizer = f"{ANNOTATION_PREFIX}/operator"
    s.posting.level = logging.WARNING  # our own Events say what matters; kopf's are noise
    s.execution.max_workers = 8
    s.batching.error_delays = [1, 2, 5, 10, 30, 60]
    s.watching.server_timeout = 300
    s.watching.client_timeout = 330
    s.networking.request_timeout = 30
