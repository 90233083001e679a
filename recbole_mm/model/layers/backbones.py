"""Sequence backbones of Li et al. 2023 (§3.5), used by IDAgnosticMMSR: SASRec, GRU4Rec, NextItNet.

Each maps right-padded item vectors ``[B,L,d]`` (ids ``[B,L]``, 0 = pad) to hidden states
``[B,L,d]``; position ``t`` sees only items ``<= t`` (causal), so trailing pads never change
the states of real positions. Scores are ``<h_t, e_item>`` (done by the model).

* SASRec: learned positions, LayerNorm + dropout on the input, ``n_layers`` post-LN blocks
  (``n_heads`` heads, FFN ``inner_size`` with ReLU), causal + key-padding mask
  (RecBole's ``TransformerEncoder``).
* GRU4Rec: input dropout, ``GRU(d, d, gru_layers, bias=False)``, no output projection.
* NextItNet: residual blocks (b) with causal dilated convolutions, kernel 3, dilations
  ``r, 2r``, LayerNorm(1e-8) + ReLU, residual (RecBole's ``ResidualBlock_b``);
  ``nextit_dilations`` repeated ``nextit_blocks`` times.
"""

import torch
from recbole.model.layers import TransformerEncoder
from recbole.model.sequential_recommender.nextitnet import ResidualBlock_b
from torch import nn

from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.initialization import init_sasrec_weights

BACKBONES = ("sasrec", "gru4rec", "nextitnet")


class SASRecBackbone(nn.Module):
    def __init__(self, d, max_len, n_layers=2, n_heads=2, inner_size=None, dropout=0.1,
                 attn_dropout=0.1):
        super().__init__()
        self.position_embedding = nn.Embedding(max_len, d)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.encoder = TransformerEncoder(n_layers, n_heads, d, inner_size or 4 * d, dropout,
                                          attn_dropout, "relu", 1e-12)
        for m in self.modules():
            init_sasrec_weights(m)

    def forward(self, seq_emb, seq):
        positions = torch.arange(seq.shape[1], device=seq.device)
        h = self.dropout(self.norm(seq_emb + self.position_embedding(positions)))
        valid = seq != 0
        causal = torch.tril(torch.ones(seq.shape[1], seq.shape[1], dtype=torch.bool,
                                       device=seq.device))
        allowed = causal.unsqueeze(0) & valid[:, None, :]
        mask = torch.where(allowed, 0.0, -10000.0).unsqueeze(1).to(h.dtype)
        return self.encoder(h, mask, output_all_encoded_layers=False)[-1]


class GRU4RecBackbone(nn.Module):
    def __init__(self, d, n_layers=4, dropout=0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(d, d, n_layers, bias=False, batch_first=True)
        for name, w in self.gru.named_parameters():
            if "weight" in name:
                nn.init.xavier_uniform_(w)

    def forward(self, seq_emb, seq):
        return self.gru(self.dropout(seq_emb))[0]


class NextItNetBackbone(nn.Module):
    def __init__(self, d, dilations=(1, 4), n_repeats=2, kernel_size=3):
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualBlock_b(d, d, kernel_size, dilation)
                                      for _ in range(n_repeats) for dilation in dilations])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, seq_emb, seq):
        return self.blocks(seq_emb)


def build_backbone(config, d):
    name = str(config["backbone"]).lower()
    if name == "sasrec":
        return SASRecBackbone(d, config["MAX_ITEM_LIST_LENGTH"], config["n_layers"],
                              config["n_heads"], config["inner_size"],
                              config["hidden_dropout_prob"], config["attn_dropout_prob"])
    if name == "gru4rec":
        return GRU4RecBackbone(d, config["gru_layers"], config["hidden_dropout_prob"])
    if name == "nextitnet":
        return NextItNetBackbone(d, tuple(config["nextit_dilations"]), config["nextit_blocks"])
    raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}; got {name!r}")
