"""Training on several processes launched by torchrun: the world from its environment, the process group,
each rank's share of a batch, and batch norm synchronised over the ranks.

torchrun starts one process per rank and sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT);
nothing here starts processes. `--batch-size` stays the global batch: every rank walks the same
seeded epoch order and takes its own contiguous share of each global batch (`shard`), so the union of
the shares is the batch a single process takes, the plan (steps, cosine schedule) is the same, and
a run may resume under another process count. Each rank scales its loss by its share of the global
batch (`share_weight`), so DDP's gradient mean is the gradient of the global batch's mean loss, and
batch norm computes its statistics over the global batch (`synchronise_batchnorm`). Only rank 0
writes (checkpoints, logs, progress bars) and validates.

gloo carries the collectives on the CPU, NCCL on CUDA (one GPU per process, cuda:LOCAL_RANK).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from seenn_deploy.errors import UserError

__all__ = ["World", "all_reduce_sums", "barrier", "check_global_batch", "process_group", "shard", "share_weight",
           "synchronise_batchnorm", "training_device", "wrap_model"]

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; World() is a single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes, logs, shows progress and validates."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        """The world torchrun describes in RANK, WORLD_SIZE, LOCAL_RANK; a single process when they are unset."""
        env = os.environ if env is None else env
        if not any(key in env for key in ENV_KEYS):
            return cls()
        values = {}
        for key in ENV_KEYS:
            text = env.get(key, "")
            if not text.isdigit():
                raise UserError(f"{key}={text!r} in the environment is not a non-negative integer: launch with "
                                "torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK, or unset all three")
            values[key] = int(text)
        world = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if world.size < 1 or world.rank >= world.size:
            raise UserError(f"RANK={world.rank} and WORLD_SIZE={world.size} do not describe a process group: "
                            "launch with torchrun, or unset RANK, WORLD_SIZE and LOCAL_RANK")
        return world

    def describe(self, device: torch.device) -> str:
        backend = _backend(device)
        return f"{self.size} processes ({backend} on {device.type})" if self.distributed else "1 process"


def check_global_batch(batch_size: int, world: World, rows: int | None = None) -> None:
    """The global batch must split evenly over the ranks, and an epoch's last batch (of `rows`) give each a row."""
    if batch_size % world.size:
        lower = batch_size - batch_size % world.size
        raise UserError(f"--batch-size {batch_size} is the global batch and does not split over {world.size} "
                        f"processes: give a multiple of {world.size} (e.g. {lower or world.size} or "
                        f"{lower + world.size}), or another --nproc-per-node")
    last = 0 if rows is None else rows % batch_size
    if 0 < last < world.size:
        raise UserError(f"--batch-size {batch_size} leaves a last batch of {last} row(s) in each epoch of {rows} "
                        f"training rows, fewer than the {world.size} processes, and each needs one: choose a batch "
                        "size (or --train-samples) that leaves none or at least one row per process")


def training_device(requested: str, world: World) -> torch.device:
    """--device as a torch.device: cpu, or under torchrun the GPU cuda:LOCAL_RANK ('cuda' or 'cuda:LOCAL_RANK')."""
    from seenn_deploy.runtime.executors.torch_executor import torch_device

    if world.distributed and requested.startswith("cuda"):
        _, _, index = requested.partition(":")
        if index and index != str(world.local_rank):
            raise UserError(f"--device {requested}: under torchrun each process takes the GPU of its LOCAL_RANK "
                            f"(cuda:{world.local_rank} here); give --device cuda, and choose the GPUs with "
                            "CUDA_VISIBLE_DEVICES")
        requested = f"cuda:{world.local_rank}"
    return torch_device(torch, requested)


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) for the block, and leave it after; a no-op alone."""
    if not world.distributed:
        yield
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed: run one process, or install a torch with it")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(_backend(device), rank=world.rank, world_size=world.size,
                            device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def shard(rows: int, world: World) -> slice:
    """This rank's contiguous share of a global batch of `rows`: sizes differ by at most one, in rank order.

    check_global_batch refuses a last batch with fewer rows than ranks, which would leave a share empty.
    """
    base, extra = divmod(rows, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (world.rank < extra))


def share_weight(local_rows: int, global_rows: int, world: World) -> float:
    """Factor on a rank's mean loss that makes DDP's gradient mean the gradient of the global batch's mean loss."""
    return local_rows * world.size / global_rows


def all_reduce_sums(values: list[float], world: World) -> list[float]:
    """The sums over all ranks of `values` (loss, correct, seen of this rank), in float64."""
    if not world.distributed:
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


class _AllReduceSum(torch.autograd.Function):
    """The sum over the ranks, whose gradient is the sum over the ranks of theirs."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        import torch.distributed as dist

        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        import torch.distributed as dist

        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with statistics over every rank's batch, for the CPU (torch's SyncBatchNorm takes GPUs only).

    Two differentiable all-reduces per call (the sum, then the squared deviations from the global mean);
    their backward sums the gradients over the ranks, as torch's SyncBatchNorm does. Eval mode uses the
    running statistics and talks to no one. Its state dict is a BatchNorm's, so checkpoints load as one.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        view = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        rows = totals[-1]
        mean = totals[:-1] / rows
        centred = x - mean.view(view)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / rows
        if self.track_running_stats:
            self._track(mean.detach(), var.detach() * rows / (rows - 1).clamp(min=1))
        out = centred * torch.rsqrt(var + self.eps).view(view)
        if self.affine:
            out = out * self.weight.view(view) + self.bias.view(view)
        return out

    @torch.no_grad()
    def _track(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased_var, momentum)


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm made to compute its statistics over all ranks: nn.SyncBatchNorm on CUDA, else gloo's."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_for_gloo(model)


def _convert_for_gloo(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        synced = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _convert_for_gloo(child))
    return module


def wrap_model(model: nn.Module, world: World, device: torch.device) -> Any:
    """The module to train with: DDP around `model` (which it shares parameters with) when distributed."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
