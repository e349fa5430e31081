"""NIR's stateless nodes as torch modules (batch first: NIR's shapes and dimensions leave the batch out)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seenn_deploy.errors import UserError


def array(node: Any, attr: str, name: str) -> np.ndarray:
    """Attribute `attr` of a NIR node as a float64 numpy array (nodes built in memory may hold torch tensors)."""
    value = getattr(node, attr, None)
    if value is None:
        raise UserError(
            f"NIR node {name!r} ({type(node).__name__}) has no {attr}: the file is incomplete; re-export it"
        )
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    try:
        out = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"NIR node {name!r}: {attr} is {value!r}, not an array of numbers") from None
    if not np.all(np.isfinite(out)):
        raise UserError(f"NIR node {name!r}: {attr} holds NaN or infinite values; re-export the model")
    return out


def ints(value: Any, n: int, what: str, name: str) -> tuple[int, ...]:
    """An int or a sequence of n ints (kernel sizes, strides, padding) as a tuple of n ints."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    flat = np.asarray(value).reshape(-1)
    if flat.size == 1:
        flat = np.repeat(flat, n)
    if flat.size != n or not np.all(np.equal(np.mod(flat, 1), 0)):
        raise UserError(f"NIR node {name!r}: {what} is {value!r}, not {n} integers")
    return tuple(int(v) for v in flat)


def _tensor(values: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def linear(node: Any, name: str, bias: bool) -> nn.Linear:
    """Affine (y = W x + b) or Linear (y = W x) on the last dimension."""
    weight = array(node, "weight", name)
    if weight.ndim != 2:
        raise UserError(f"NIR node {name!r}: weight has shape {weight.shape}, not [out, in]")
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(_tensor(weight))
        if bias:
            b = array(node, "bias", name)
            if b.size == 1:
                b = np.full(weight.shape[0], float(b.reshape(-1)[0]))
            if b.shape != (weight.shape[0],):
                raise UserError(f"NIR node {name!r}: bias has shape {b.shape}, not [{weight.shape[0]}]")
            layer.bias.copy_(_tensor(b))
    return layer.eval()


def conv(node: Any, name: str, dims: int) -> nn.Module:
    """Conv1d / Conv2d: weight [C_out, C_in / groups, *kernel], padding an int per dim or 'same' / 'valid'."""
    weight = array(node, "weight", name)
    if weight.ndim != dims + 2:
        raise UserError(f"NIR node {name!r}: weight has shape {weight.shape}, not [C_out, C_in, {dims} kernel dims]")
    padding = node.padding
    if isinstance(padding, bytes):
        padding = padding.decode()
    if not isinstance(padding, str):
        padding = ints(padding, dims, "padding", name)
    elif padding not in ("same", "valid"):
        raise UserError(f"NIR node {name!r}: padding {padding!r} is not an int, 'same' or 'valid'")
    groups = int(np.asarray(node.groups).reshape(-1)[0])
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    layer = cls(weight.shape[1] * groups, weight.shape[0], kernel_size=weight.shape[2:],
                stride=ints(node.stride, dims, "stride", name), padding=padding,
                dilation=ints(node.dilation, dims, "dilation", name), groups=groups, bias=True)
    bias = array(node, "bias", name) if getattr(node, "bias", None) is not None else np.zeros(weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(_tensor(weight))
        layer.bias.copy_(_tensor(np.broadcast_to(bias.reshape(-1), (weight.shape[0],))))
    return layer.eval()


class Pool2d(nn.Module):
    """AvgPool2d, or SumPool2d as the average times the window size (what Sinabs computes), x [B, C, H, W]."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], total: bool) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding, self.total = kernel, stride, padding, total

    def forward(self, x: Tensor) -> Tensor:
        y = F.avg_pool2d(x, self.kernel, self.stride, self.padding)
        return y * float(self.kernel[0] * self.kernel[1]) if self.total else y

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding={self.padding}, sum={self.total}"


def pool(node: Any, name: str, total: bool) -> Pool2d:
    kernel = ints(node.kernel_size, 2, "kernel_size", name)
    stride = ints(node.stride if getattr(node, "stride", None) is not None else kernel, 2, "stride", name)
    padding = ints(getattr(node, "padding", 0) if getattr(node, "padding", None) is not None else 0, 2, "padding",
                   name)
    return Pool2d(kernel, stride, padding, total)


class Flatten(nn.Module):
    """NIR's Flatten: start_dim / end_dim count the sample's dimensions (no batch), as NIR's shapes do."""

    def __init__(self, start_dim: int, end_dim: int) -> None:
        super().__init__()
        self.start_dim = start_dim + 1 if start_dim >= 0 else start_dim
        self.end_dim = end_dim + 1 if end_dim >= 0 else end_dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(x, self.start_dim, self.end_dim)


def flatten(node: Any, name: str) -> Flatten:
    return Flatten(int(np.asarray(node.start_dim)), int(np.asarray(node.end_dim)))


class Scale(nn.Module):
    """y = x * scale, elementwise over the sample."""

    scale: Tensor

    def __init__(self, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", _tensor(scale))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Identity(nn.Module):
    """A graph's or subgraph's Input / Output node: passes its (summed) input on."""

    def forward(self, x: Tensor) -> Tensor:
        return x
