"""Loading models and processors; LoRA and freezing; saving in HF format.

Supported: any image-text-to-text model ``AutoModelForImageTextToText`` knows (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL ...), from a local directory or a hub id (hub ids need network or a warm
cache; the tests only use local directories). LoRA goes through peft on the language model's
linear layers only (the vision tower never gets adapters: its names are excluded by a regex).
Precision: ``auto`` is bf16 weights on CUDA and fp32 on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import ConfigError, TrainConfig


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return torch.float32


def quiet_transformers() -> None:
    """No download/shard progress bars in training logs."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def check_model_ref(path: str | Path, key: str) -> None:
    """A local path that does not exist is a config error naming the key, not a hub lookup
    (which would fail later with a confusing "repo id" message)."""
    p = str(path)
    if (p.startswith(("/", "./", "../", "~")) or p.count("/") != 1) and not Path(
        p
    ).expanduser().exists():
        raise ConfigError(f"{key}: {p} does not exist (expected an HF model folder or a hub id)")


def load_processor(path: str):
    from transformers import AutoProcessor

    check_model_ref(path, "tokenizer_model (default: base_model)")
    return AutoProcessor.from_pretrained(path)


def load_model(path: str | Path, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForImageTextToText

    check_model_ref(path, "base_model")
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype)
    return model.to(device)


def merge_adapter(model, adapter: str | Path):
    """``model`` with the LoRA adapter in ``adapter`` merged into its weights (a plain model
    again, ready for full fine-tuning or a new adapter)."""
    from peft import PeftModel

    check_model_ref(adapter, "init_adapter")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    # Loading an adapter for inference froze every base weight; training needs them back.
    return merged.requires_grad_(True)


def lora_target_regex(modules: list[str]) -> str:
    """A peft ``target_modules`` regex: these linear layers, anywhere except the vision tower."""
    return rf"^(?!.*\bvisual\b).*\.({'|'.join(modules)})$"


def apply_lora(model, cfg: TrainConfig):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_regex(cfg.lora_target_modules),
        bias="none",
    )
    return get_peft_model(model, config)


def freeze_vision(model) -> int:
    """Stop gradients into the vision tower (patch embed, blocks, mergers); returns #params."""
    n = 0
    for name, p in model.named_parameters():
        if ".visual." in f".{name}" and p.requires_grad:
            p.requires_grad_(False)
            n += p.numel()
    return n


def is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").exists()


def load_for_inference(path: str | Path, device: torch.device | None = None):
    """``(model, processor)`` from a full HF directory or a checkpoint holding a PEFT adapter
    (the base comes from the manifest's ``base_model`` or the adapter config)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = Path(path)
    processor = load_processor(str(path))
    if is_adapter_dir(path):
        from peft import PeftModel

        base = _adapter_base(path)
        model = PeftModel.from_pretrained(load_model(base, dtype, device), str(path))
    else:
        model = load_model(path, dtype, device)
    model.eval()
    return model, processor


def _adapter_base(path: Path) -> str:
    manifest = path / "manifest.json"
    if manifest.exists():
        base = json.loads(manifest.read_text()).get("base_model")
        if base:
            return base
    return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
