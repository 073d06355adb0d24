"""vlm_operator: the kopf operator that reconciles TrainingShape, TrainerJob and Checkpoint."""

__version__ = "0.1.0"
