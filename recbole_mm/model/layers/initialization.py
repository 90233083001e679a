"""The SASRec/BERT weight initialisation of the transformer parts of MuSTRec, MDSRec and
IDAgnosticMMSR (the same rule as RecBole's ``SASRec._init_weights``): Linear and Embedding
weights N(0, std), Linear biases 0, LayerNorm weight 1 and bias 0. Anything else (the frequency
filter's ``sqrt_beta``, GRU and convolution weights, ...) keeps its own initialisation.
"""
from torch import nn

__all__ = ["init_sasrec_weights"]


def init_sasrec_weights(module, std=0.02):
    """Initialise ``module`` itself, not its children: call it through ``model.apply`` or on
    each of ``model.modules()`` (the two visit modules in different orders, so they draw the
    random weights in different orders)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(0.0, std)
    if isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
