"""vlm_trainer: the trainer that runs inside TrainerJob pods (SFT, DPO, RL on Qwen-VL models)."""

__version__ = "0.1.0"
