"""Pure builders: dicts in, Kubernetes manifests out. No I/O, no clock, no randomness."""
