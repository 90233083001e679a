"""Activation functions by config name (``hidden_act``), one table for every recbole_mm block.

The names are those RecBole's ``FeedForward`` accepts (plus ``silu``). Each maps to torch's own
kernel: ``gelu`` is the exact erf form ``x * Phi(x)`` (``F.gelu``), ``swish`` is ``x * sigmoid(x)``
(``F.silu``). RecBole's ``FeedForward.gelu`` computes the same function from five separate tensor
operations, and autograd keeps each one's intermediate for the backward pass. In MDSRec's three
towers that took about 300 ms of a 1.8 s step on Baby scale (docs/benchmarks/mdsrec.md).
:func:`use_fused_activations` points the ``FeedForward`` modules of a built model at the fused
kernels, which give the same values up to float rounding.
"""
import torch
import torch.nn.functional as F
from recbole.model.layers import FeedForward

from recbole_mm.errors import ConfigError

__all__ = ["ACTIVATIONS", "activation", "use_fused_activations"]

ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "swish": F.silu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}
_RECBOLE_COMPOSITES = {FeedForward.gelu: F.gelu, FeedForward.swish: F.silu}


def activation(name):
    """The activation called ``name`` (config key ``hidden_act``)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"config key 'hidden_act' must be one of {sorted(ACTIVATIONS)}, got {name!r}.")
    return ACTIVATIONS[name]


def use_fused_activations(module):
    """Give every RecBole ``FeedForward`` inside ``module`` torch's fused kernel for its GELU or
    swish (construction time; returns the number changed)."""
    changed = 0
    for block in module.modules():
        if isinstance(block, FeedForward):
            composite = getattr(block.intermediate_act_fn, "__func__", None)
            if composite in _RECBOLE_COMPOSITES:
                block.intermediate_act_fn = _RECBOLE_COMPOSITES[composite]
                changed += 1
    return changed
