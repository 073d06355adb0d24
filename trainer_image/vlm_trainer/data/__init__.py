"""The data layer shared by every recipe: JSONL streaming and validation (``jsonl``,
``validate``), images (``images``), chat rendering to tokens + loss weights (``render``),
batching (``collate``) and the shuffled, resumable record stream (``stream``)."""
