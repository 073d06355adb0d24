"""`vlm-operator`: run the operator (a thin wrapper around `kopf.run`).

Defaults suit one replica watching every namespace: `--standalone`, `--all-namespaces`, the
liveness endpoint on :8080/healthz and metrics on :9090/metrics. Several replicas use
`--peering NAME` (kopf's peering objects must exist) so that only one is active at a time.
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
