"""Backbones of the few-shot learners: Conv-4 (max-pool and stride-2 variants) and the 2x40 ReLU MLP.

Conv-4 (Vinyals et al. 2016; Snell et al. 2017; Finn et al. 2017): four blocks of
``3x3 conv (64 channels) -> BatchNorm -> ReLU``, in two variants:

- ``pool``: stride-1 convolutions (padding 1), each block followed by a 2x2 max-pool (ProtoNet,
  Matching Networks; MAML on MiniImagenet). 28x28 inputs shrink 28 -> 14 -> 7 -> 3 -> 1; the output
  is flattened (64 features).
- ``stride``: stride-2 convolutions (padding 1), no pooling (MAML and Reptile on Omniglot):
  28 -> 14 -> 7 -> 4 -> 2. ``readout="mean"`` averages over the 2x2 positions (MAML's ``forward_conv``
  ends with ``reduce_mean`` over height and width: 64 features); ``readout="flatten"`` keeps them
  (Reptile's ``OmniglotModel``: 256 features).

A linear head maps the features to ``n_out`` outputs (the class logits of MAML-style learners);
``n_out=0`` leaves it out (ProtoNet: the features are the embedding).

BatchNorm is explicit (``norm``):

- ``"batch"``: :class:`BatchStatNorm2d` normalises with the statistics of the batch being forwarded,
  in plain mean/variance ops, and keeps no running averages; MAML's and Reptile's reference code (and
  learn2learn's examples) normalise this way at training *and* test time. These plain ops are exact
  under ``torch.func.vmap`` and for second-order gradients; ``nn.BatchNorm2d`` under ``vmap`` gives a
  wrong second-order meta-gradient (pytorch/functorch#534, SPEED.md), so the batched MAML path refuses it.
- ``"running"``: ``nn.BatchNorm2d``: batch statistics plus running averages in training mode, the
  running averages in ``eval()`` mode (ProtoNet's test time: non-transductive).

Both have a learned scale and shift (learn2learn's choice; MAML's TF code learns only the shift, the
``tf.contrib.layers.batch_norm`` default). Weights use PyTorch's default initialisation (MAML's code
uses Xavier for convolutions and a truncated normal for linear layers).

The sinusoid regressor is MAML's MLP: ``1 -> 40 -> 40 -> 1`` with ReLU (:func:`sinusoid_mlp`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as TF
from torch import nn

from metarl.policies import mlp

CONV4_VARIANTS = ("pool", "stride")
READOUTS = ("mean", "flatten")
NORMS = ("batch", "running")
BACKBONES = ("conv4-pool", "conv4-stride", "mlp")


class BatchStatNorm2d(nn.Module):
    """``y = (x - mean_B(x)) / sqrt(var_B(x) + eps) * weight + bias`` over batch, height and width.

    Input ``[B, C, H, W]``; the statistics are the batch's own (biased variance, as ``nn.BatchNorm2d``
    normalises in training mode). No running averages. Under ``torch.func`` transforms (``vmap``, ``grad``)
    it runs as plain mean/variance ops, which vmap batches exactly; elsewhere as ``F.batch_norm``.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch._C._functorch.peek_interpreter_stack() is None:
            # Outside torch.func transforms PyTorch's fused kernel computes the same function (its double
            # backward is exact too) at a fraction of the cost: the plain ops below took over half of a
            # second-order MAML meta-iteration on CPU (torch.profiler, benchmarks/speed/maml_meta_iteration.py).
            return TF.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


class Conv4(nn.Module):
    """Conv-4 backbone (module docstring): ``[B, C, H, W] -> [B, n_out]`` (or ``[B, features]`` if ``n_out=0``)."""

    def __init__(self, in_channels: int = 1, n_out: int = 0, hidden: int = 64, variant: str = "pool",
                 norm: str = "batch", readout: str = "mean", image_size: int = 28) -> None:
        super().__init__()
        if variant not in CONV4_VARIANTS:
            raise ValueError(f"Conv-4 variant must be one of {CONV4_VARIANTS}, got {variant!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        self.variant, self.norm, self.readout = variant, norm, readout
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            stride = 2 if variant == "stride" else 1
            blocks += [nn.Conv2d(channels, hidden, 3, stride=stride, padding=1),
                       BatchStatNorm2d(hidden) if norm == "batch" else nn.BatchNorm2d(hidden), nn.ReLU()]
            if variant == "pool":
                blocks.append(nn.MaxPool2d(2))
            size = (size + 1) // 2 if variant == "stride" else size // 2
            channels = hidden
        self.features = nn.Sequential(*blocks)
        flat = variant == "pool" or readout == "flatten"
        self.num_features = hidden * size * size if flat else hidden
        self.head = nn.Linear(self.num_features, n_out) if n_out > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        h = h.mean(dim=(2, 3)) if self.variant == "stride" and self.readout == "mean" else h.flatten(1)
        return self.head(h) if self.head is not None else h


def sinusoid_mlp(hidden: Sequence[int] = (40, 40), in_features: int = 1, out_features: int = 1) -> nn.Sequential:
    """MAML's sinusoid regressor: ``[B, 1] -> [B, 1]``, hidden ReLU layers (default 2 x 40)."""
    return mlp([in_features, *hidden, out_features], "relu")


def make_backbone(name: str, input_shape: Sequence[int], n_out: int, hidden: Sequence[int] = (),
                  norm: str = "batch", readout: str = "mean") -> nn.Module:
    """A backbone by name: ``conv4-pool``, ``conv4-stride`` (images ``[C, H, W]``) or ``mlp`` (vectors ``[D]``).

    ``hidden``: Conv-4 channels (one value, default 64) or the MLP's hidden sizes (default 40, 40).
    """
    if name == "mlp":
        if len(input_shape) != 1:
            raise ValueError(f"the mlp backbone takes vector inputs [D], got inputs of shape {tuple(input_shape)}; "
                             "use conv4-pool or conv4-stride for images")
        return sinusoid_mlp(tuple(hidden) or (40, 40), input_shape[0], n_out)
    if name in ("conv4-pool", "conv4-stride"):
        if len(input_shape) != 3:
            raise ValueError(f"{name} takes images [C, H, W], got inputs of shape {tuple(input_shape)}; "
                             "use the mlp backbone for vectors")
        if len(hidden) > 1:
            raise ValueError(f"{name} takes one channel count in hidden, got {tuple(hidden)}")
        return Conv4(input_shape[0], n_out, hidden[0] if hidden else 64, name.split("-")[1], norm, readout,
                     input_shape[-1])
    raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")


__all__ = ["BACKBONES", "BatchStatNorm2d", "Conv4", "make_backbone", "sinusoid_mlp"]
