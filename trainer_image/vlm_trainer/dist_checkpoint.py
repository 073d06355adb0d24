"""Checkpoints of a distributed run: sharded training state through
``torch.distributed.checkpoint`` (DCP), plus the consolidated HF export rank 0 writes.

A ``step-*`` checkpoint written by several processes holds, besides the usual HF files (written
by rank 0 from the full state dict, so every checkpoint stays promotable) and
``trainer_state/progress.json``::

    trainer_state/sharded/       DCP: trainable weights + optimizer state, keyed by parameter
                                 name; each rank writes its own shard (shared storage assumed)
    trainer_state/dist_meta.pt   scheduler state, world size, strategy
    trainer_state/rng-rank<r>.pt each rank's RNG states

Resume: DCP re-shards on load, so weights, optimizer, schedule and data position restore on any
world size, including one process (DCP loads without a process group). RNG streams restore
only on the same world size (else they start from the seed: bit-exactness is then not promised,
and the log says so). A checkpoint written by *one* process (``state.pt``, optimizer state keyed
by parameter index) resumes under DDP, where every rank holds whole parameters; under FSDP it
is refused with a config error that says how to proceed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .config import ConfigError
from .distributed import Dist

SHARDED = "sharded"
META = "dist_meta.pt"


def has_sharded_state(path: Path) -> bool:
    return (path / ckpt.STATE_DIR / META).exists()


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen weights (the LoRA base, a frozen vision tower) come from the base model or the HF
    # export on resume; saving them in every sharded checkpoint would only cost disk.
    return StateDictOptions(ignore_frozen_params=True)


def write_state(
    out: Path | None,
    d: Dist,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    final: bool,
) -> tuple[Path, dict | None]:
    """Collective: every rank calls it; rank 0 passes the checkpoint's temp folder (made by
    ``checkpoint.write_checkpoint``), the others None. Writes the sharded state (not for
    ``final``: training is over) and returns ``(folder, full_state)`` where ``full_state`` is the
    consolidated model state dict on rank 0 under FSDP (None otherwise: under DDP rank 0's
    module already holds every weight)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    out = Path(d.broadcast(str(out) if out is not None else None))
    state_dir = out / ckpt.STATE_DIR
    if not final:
        state_dir.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt.rng_state(), state_dir / f"rng-rank{d.rank}.pt")
        msd, osd = get_state_dict(model, optimizer, options=_options())
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=state_dir / SHARDED)
        if d.is_main:
            meta = {
                "scheduler": scheduler.state_dict(),
                "world_size": d.world_size,
                "strategy": d.strategy,
            }
            torch.save(meta, state_dir / META)
    full = None
    if d.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        full = get_model_state_dict(model, options=opts)
    d.barrier()  # every shard and RNG file is on disk before rank 0 hashes them
    return out, (full if d.is_main else None)


def load_state(
    path: Path,
    d: Dist,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    log: Callable[[str], None],
) -> None:
    """Restore weights (trainable ones), optimizer, scheduler and, on the same world size, the
    RNG streams from a sharded checkpoint. Every rank calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state_dir = path / ckpt.STATE_DIR
    meta = torch.load(state_dir / META, map_location="cpu", weights_only=True)
    msd, osd = get_state_dict(model, optimizer, options=_options())
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=state_dir / SHARDED)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=_options(),
    )
    scheduler.load_state_dict(meta["scheduler"])
    if meta["world_size"] == d.world_size:
        rng = torch.load(state_dir / f"rng-rank{d.rank}.pt", map_location="cpu", weights_only=True)
        ckpt.set_rng_state(rng)
    elif d.is_main:
        log(
            f"{path}: written by {meta['world_size']} processes, resumed on {d.world_size}: "
            "weights, optimizer, schedule and data position are restored; RNG streams (dropout) "
            "restart from the seed"
        )


def check_single_process_resume(path: Path, d: Dist) -> None:
    """A one-process checkpoint's optimizer state is keyed by parameter index over whole
    tensors: fine for DDP (every rank holds them), not for FSDP's shards."""
    if d.strategy == "fsdp":
        raise ConfigError(
            f"{path} was written by a single process; resuming it sharded (FSDP on "
            f"{d.world_size} processes) is not supported: resume it with one process, or with "
            "VLM_DIST_STRATEGY=ddp, then continue on more"
        )
