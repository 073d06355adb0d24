"""Distributed training with PyTorch's own stack: torchrun's environment, a process group, DDP
or FSDP2, and the few rank-aware helpers the recipes need.

Supported:

- Launch by ``torchrun`` (one process per GPU, or per pod on CPU), which sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. ``WORLD_SIZE`` unset or 1
  is the single-process trainer, untouched: no process group, no wrapper, every helper here is
  the identity, so one process stays bit-for-bit what it was.
- Backend nccl on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU. ``init_process_group`` gets a
  timeout (``VLM_DIST_TIMEOUT_S``, default 600 s) that also bounds every collective: a peer that
  never arrives, or dies mid-run, ends in an error naming the peer count and ``MASTER_ADDR``, not
  a hang. (With torchrun, a missing *node* is first caught by torchrun's own rendezvous, whose
  timeout is ``--rdzv-conf timeout=`` or ``PET_RDZV_CONF``; 600 s by default.)
- Strategy (``VLM_DIST_STRATEGY``): ``fsdp`` (default on CUDA) is FSDP2 ``fully_shard`` on every
  block the model lists in ``_no_split_modules`` (decoder layers, vision blocks), on the vision
  tower (``visual``) and on the root,
  bf16 compute with fp32 gradient reduction on CUDA; ``ddp`` (default on CPU) is
  ``DistributedDataParallel``. Both reduce gradients by *sum*, not mean: each rank divides its
  loss by the global number of weighted tokens (``Dist.all_sum``), so the summed gradient is
  exactly the one-process gradient of the same global batch.

Assumed: every rank reads the same data stream and takes a contiguous share of each global
micro-batch (``share``), so the data position ``(epoch, cursor)`` is global and resuming on
another world size keeps it. Every rank runs the vision tower on every micro-batch (a
zero-weight dummy image where its share has none), so DDP's reducer and FSDP's all-gathers see
the same modules on every rank. Checkpoint storage is shared by all ranks (one PVC or bucket).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

TIMEOUT_ENV = "VLM_DIST_TIMEOUT_S"
STRATEGY_ENV = "VLM_DIST_STRATEGY"
DEFAULT_TIMEOUT_S = 600


class RendezvousError(RuntimeError):
    """The process group could not form (a peer never arrived): retrying may help, so this is not
    a config error (exit 3, the Job retries)."""


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class Dist:
    """This process's place in the job. ``Dist()`` is the single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"  # none | ddp | fsdp
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _bucket_syncs: dict[int, int] = field(default_factory=dict)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (identity for one process) -----------------------------------------------
    def all_sum(self, *values: float) -> tuple[float, ...] | float:
        """Sum numbers over ranks (float64). One value in, one float out."""
        if not self.is_distributed:
            return values[0] if len(values) == 1 else values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out = tuple(t.tolist())
        return out[0] if len(out) == 1 else out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def all_gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` for one process). Contiguous shares
        (``share``) make rank order the global order of a micro-batch."""
        if not self.is_distributed:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    # -- data ---------------------------------------------------------------------------------
    def share(self, samples: list, zero_weight: Callable[[Any], Any]) -> list:
        """This rank's contiguous share of one global micro-batch (sizes differ by at most one).
        A rank left with nothing (a short last batch) gets a zero-weight copy of a sample, so it
        still runs forward/backward with the others."""
        if not self.is_distributed:
            return samples
        n, w, r = len(samples), self.world_size, self.rank
        mine = samples[r * n // w : (r + 1) * n // w]
        return mine or [zero_weight(samples[min(r, n - 1)])]

    # -- gradients ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def accumulate(self, model: torch.nn.Module, last: bool) -> Iterator[None]:
        """Wrap one micro-batch's forward+backward: gradients are reduced only on the last one
        of the optimizer step (DDP ``no_sync``; FSDP ``set_requires_gradient_sync``)."""
        if self.strategy == "ddp" and not last:
            with model.no_sync():
                yield
            return
        if self.strategy == "fsdp":
            model.set_requires_gradient_sync(last)
        yield

    def _ddp_sum_hook(self, state, bucket):  # no annotations: DDP checks them literally
        # Sum, not DDP's mean (the losses are already normalised globally). Count syncs per
        # bucket: a second sync in one step means a backward ran outside ``accumulate``, and
        # a sum reduction would then count earlier micro-batches twice.
        i = bucket.index()
        self._bucket_syncs[i] = self._bucket_syncs.get(i, 0) + 1
        fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    def check_synced(self) -> None:
        """Before each optimizer step: under DDP, gradients were reduced exactly once."""
        if self.strategy != "ddp":
            return
        counts = set(self._bucket_syncs.values())
        self._bucket_syncs.clear()
        if counts != {1}:
            raise RuntimeError(
                "gradients were not reduced exactly once across ranks in this step: the recipe "
                "must run forward through `self.train_model` and each micro-batch's backward "
                "inside `self.dist.accumulate(self.train_model, last)`"
            )


def init(prefer: torch.device) -> Dist:
    """Join the process group torchrun describes (a no-op for one process). ``prefer`` is the
    device the config asks for; under several processes CUDA means ``cuda:LOCAL_RANK``."""
    world = env_world_size()
    if world <= 1:
        return Dist(device=prefer)
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RendezvousError(
                f"WORLD_SIZE={world} but {key} is not set: launch with torchrun (which sets "
                "RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)"
            )
    rank, local = env_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = prefer.type == "cuda"
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    strategy = os.environ.get(STRATEGY_ENV) or ("fsdp" if cuda else "ddp")
    if strategy not in ("ddp", "fsdp"):
        raise RendezvousError(f"{STRATEGY_ENV}={strategy!r}: expected ddp or fsdp")
    timeout = int(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout),
            **({"device_id": device} if cuda else {}),
        )
        # init can return before every peer has joined; a barrier makes "all here" certain.
        dist.barrier()
    except Exception as e:
        raise RendezvousError(
            f"rank {rank}: the process group of {world} processes did not form within "
            f"{timeout}s at MASTER_ADDR {where} (a peer pod/process never arrived or died): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    return Dist(rank, world, local, strategy, device)


def shutdown(clean: bool = True) -> None:
    """Leave the process group. ``clean``: first wait for every rank, since a rank tearing
    gloo down while a peer still finishes its last collective can abort that peer."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            if clean:
                dist.barrier()
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------
# Model wrapping


def _block_classes(model: torch.nn.Module) -> set[str]:
    """Class names the HF model says must stay whole (its decoder layers, vision blocks)."""
    names: set[str] = set()
    for m in model.modules():
        names |= set(getattr(m, "_no_split_modules", None) or [])
    return names


def wrap(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """The module to run training forwards through. One process: ``model`` itself. DDP: a
    wrapper (``model`` keeps the same parameters, so save/eval use it unchanged). FSDP2:
    ``model`` itself, sharded in place."""
    if not d.is_distributed:
        return model
    if d.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp = DDP(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
        ddp.register_comm_hook(None, d._ddp_sum_hook)
        return ddp
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()
    if d.device.type == "cuda":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = _block_classes(model)
    for m in list(model.modules()):
        if type(m).__name__ in blocks:
            fully_shard(m, mp_policy=mp)
    # The vision tower as a unit of its own (after its blocks: a unit takes the parameters no
    # inner unit holds): HF's generate encodes images by calling it directly, outside the root
    # forward whose hook would otherwise be what gathers the patch embedding.
    for name, m in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] == "visual":
            fully_shard(m, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    for m in model.modules():  # each fully_shard unit reduces its own gradients
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum: the losses are normalised globally
            m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
    return model


def drop_vision_grads(model: torch.nn.Module) -> None:
    """Gradients of the vision tower (``visual`` in the name, as in Qwen-VL) back to None."""
    for name, p in model.named_parameters():
        if ".visual." in f".{name}":
            p.grad = None


def grad_norm(norm: torch.Tensor) -> float:
    """``clip_grad_norm_``'s result as a float (a DTensor under FSDP)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full else norm)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
