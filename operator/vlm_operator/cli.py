"""`vlm-operator`: run the operator (a thin wrapper around `kopf.run`).

Defaults suit one replica watching every namespace: `--standalone`, `--all-namespaces`, the
liveness endpoint on :8080/healthz and metrics on :9090/metrics. Several replicas use
`--leader-elect` (a coordination.k8s.io Lease, `--lease-namespace`/`--lease-name`, see
vlm_operator.leader): only the holder reconciles, a standby takes over within
`--lease-seconds` + 2 s of the holder's death. `--peering NAME` (kopf's peering) is still
accepted, but it only pauses kopf's watches, not the operator's work queue: use the Lease.
"""

from __future__ import annotations

import argparse
import logging
import os
import random


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="vlm-operator", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace or glob, e.g. 'team-*' (repeatable)",
    )
    ap.add_argument("--all-namespaces", action="store_true", help="watch every namespace (default)")
    ap.add_argument("--peering", help="kopf peering name; omit for --standalone")
    ap.add_argument("--standalone", action="store_true", help="no peering (default)")
    ap.add_argument(
        "--leader-elect", action="store_true", help="only the holder of the Lease reconciles"
    )
    ap.add_argument(
        "--lease-namespace",
        default=os.environ.get("VLM_OPERATOR_NAMESPACE", "default"),
        help="namespace of the leader Lease (default: $VLM_OPERATOR_NAMESPACE, else default)",
    )
    ap.add_argument("--lease-name", default="vlm-trainer-operator", help="name of the Lease")
    ap.add_argument("--lease-seconds", type=float, default=15.0, help="Lease duration")
    ap.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL; '' disables",
    )
    ap.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("VLM_METRICS_PORT", "9090"))
    )
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    os.environ["VLM_METRICS_PORT"] = str(a.metrics_port)
    os.environ["VLM_WATCH_NAMESPACES"] = ",".join(a.namespace)  # read by settings.Settings
    os.environ["VLM_LEADER_LEASE"] = f"{a.lease_namespace}/{a.lease_name}" if a.leader_elect else ""
    os.environ["VLM_LEASE_SECONDS"] = str(a.lease_seconds)
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if os.environ.get("VLM_LOG_FORMAT") == "json":
        fmt = '{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":%(message)r}'
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format=fmt)
    logging.getLogger("kopf").setLevel(logging.INFO if a.verbose else logging.WARNING)

    import kopf

    import vlm_operator.main  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=not a.peering,
        peering_name=a.peering,
        # kopf pauses every peer when two share a priority; a random one per process means
        # exactly one replica is active and the others wait.
        priority=random.randint(1, 2**30) if a.peering else 0,
        clusterwide=not a.namespace,
        namespaces=a.namespace,
        liveness_endpoint=a.liveness or None,
    )


if __name__ == "__main__":
    main()
