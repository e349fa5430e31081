"""Stateless rewrites that keep a converted model's eval outputs bit-identical and give clean ONNX graphs.

* `FoldTime`: one run of stateless layers over [T, B, ...] with time folded into the batch once,
  instead of once per layer (SpikingJelly's 'm' wrappers fold and unfold around every layer).
  The reshapes between a conv and its BatchNorm would stop the exporter from folding the BN.
* `ExportBatchNorm`: a BatchNorm the exporter cannot fold into a conv (none right before it) runs
  as torch's own BatchNorm, and as a per-channel multiply-add while an ONNX export traces it
  (a lone BatchNormalization op is refused by the graph checks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from seenn_deploy.errors import InternalError, UserError

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class FoldTime(nn.Module):
    """Stateless `layers` over a sequence: x [T, B, ...] -> [T, B, ...], as [T*B, ...] inside."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class ExportBatchNorm(nn.Module):
    """Eval BatchNorm: `bn` itself in torch; x * scale + shift per channel in an ONNX export.

    x [B, C, ...], or [T, B, C, ...] when `bn` is a multi-step SpikingJelly layer (step_mode 'm');
    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale.
    """

    scale: Tensor
    shift: Tensor

    def __init__(self, bn: _BatchNorm) -> None:
        super().__init__()
        self.bn: nn.Module = bn
        try:
            self.channel_dim = 2 if bn.step_mode == "m" else 1
        except AttributeError:  # a torch BatchNorm
            self.channel_dim = 1
        mean, var = bn.running_mean, bn.running_var
        if mean is None or var is None:
            raise InternalError(f"{type(bn).__name__} without running statistics reached ExportBatchNorm")
        with torch.no_grad():
            scale = torch.rsqrt(var.float() + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.float()
            shift = -mean.float() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.float()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: Tensor) -> Tensor:
        if torch.onnx.is_in_onnx_export():
            shape = (1,) * self.channel_dim + (-1,) + (1,) * (x.dim() - self.channel_dim - 1)
            return x * self.scale.view(shape) + self.shift.view(shape)
        return self.bn(x)


def prepare_batchnorms(root: nn.Module) -> nn.Module:
    """Wrap every BatchNorm not right after a conv in a plain Sequential in ExportBatchNorm (in place; root returned).

    BatchNorms must use running statistics: one that normalises with batch statistics in eval
    (track_running_stats=False) depends on the batch, and cannot be exported.
    """
    for path, module in root.named_modules():
        if isinstance(module, _BatchNorm) and module.running_var is None:
            raise UserError(
                f"{path or 'the model'} ({type(module).__name__}) has track_running_stats=False, so its output depends "
                "on the batch; export needs BatchNorm layers with running statistics"
            )
    if isinstance(root, _BatchNorm):
        return ExportBatchNorm(root)
    _wrap_children(root)
    return root


def _wrap_children(module: nn.Module) -> None:
    sequential = isinstance(module, nn.Sequential)  # SpikingJelly's containers run their children in order too
    previous = None
    for name, child in list(module.named_children()):
        if isinstance(child, _BatchNorm):
            if not (sequential and isinstance(previous, CONVS)):
                module._modules[name] = ExportBatchNorm(child)
        elif not isinstance(child, ExportBatchNorm):
            _wrap_children(child)
        previous = child
