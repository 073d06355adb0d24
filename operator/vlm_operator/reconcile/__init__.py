"""Reconcilers, one module per kind: read state, decide (pure), act through `kube`."""
