"""Modality fusion modules of Li et al. 2023 (§3.3, Table 3); used by IDAgnosticMMSR.

Every fusion maps text tokens ``x [B,Lx,d]`` (mask ``[B,Lx]``) and image tokens
``y [B,Ly,d]`` (mask ``[B,Ly]``; all False for an item without an image) to one item
vector ``[B,d]``.

Coarse fusions use the masked token means ``x̄, ȳ`` and **one LayerNorm(d, eps 1e-6) shared
by both modalities**; Linear layers are xavier-normal with zero bias:

* ``sum``:    ``W_x LN(x̄) + W_y LN(ȳ)``
* ``concat``: ``W_o [LN(x̄); LN(ȳ)]``
* ``film``:   ``[γ; β] = W_f LN(x̄)``; ``W_o (γ ⊙ LN(ȳ) + β)``
* ``gate``:   ``g = σ(W_x LN(x̄))``; ``W_o (g ⊙ W_y LN(ȳ))``
* ``*_dnn``:  the above, then 3 × [Dropout, Linear(d,d), ReLU] (the last ReLU is
  ``dnn_final_act``; the official code keeps it, so vectors are >= 0).

Attention fusions (BERT-style post-LN blocks, eps 1e-12, FFN 4d with GELU, init N(0, 0.02),
randomly initialised as in the paper):

* ``merge_attn``: concatenate ``[x + t_0; y + t_1]`` (type embeddings, ``merge_type_emb``;
  the official code drops them, B5), ``n`` self-attention blocks, masked mean.
* ``co_attn``: add type embeddings; per layer (LXMERT order) one cross-attention module
  shared by both directions, then per-modality self-attention + FFN;
  output ``W_o [maskedmean(x); maskedmean(y)]``.
"""

import torch
from recbole.model.layers import TransformerLayer
from torch import nn

from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.initialization import init_sasrec_weights

COARSE = ("sum", "concat", "film", "gate")
TOKEN_FUSIONS = ("co_attn", "merge_attn")  # attend over the tokens of each modality
FUSIONS = COARSE + tuple(f"{c}_dnn" for c in COARSE) + TOKEN_FUSIONS


def masked_mean(tokens, mask):
    """Mean over tokens where ``mask`` is True; zero vector where no token is valid."""
    weights = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _xavier(layer):
    nn.init.xavier_normal_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _additive_mask(mask):
    """Key-padding mask ``[B,L]`` -> RecBole additive mask ``[B,1,1,L]``."""
    return torch.where(mask[:, None, None, :], 0.0, -10000.0).to(torch.float32)


class CoarseFusion(nn.Module):
    """``sum``/``concat``/``film``/``gate``, optionally followed by the 3-layer DNN."""

    def __init__(self, kind, d, dnn=False, dropout=0.1, dnn_final_act=True):
        super().__init__()
        if kind not in COARSE:
            raise ConfigError(f"unknown coarse fusion {kind!r}")
        self.kind = kind
        self.norm = nn.LayerNorm(d, eps=1e-6)  # shared by both modalities
        if kind == "sum":
            self.w_x, self.w_y = _xavier(nn.Linear(d, d)), _xavier(nn.Linear(d, d))
        elif kind == "concat":
            self.w_o = _xavier(nn.Linear(2 * d, d))
        elif kind == "film":
            self.w_f, self.w_o = _xavier(nn.Linear(d, 2 * d)), _xavier(nn.Linear(d, d))
        else:  # gate
            self.w_x, self.w_y = _xavier(nn.Linear(d, d)), _xavier(nn.Linear(d, d))
            self.w_o = _xavier(nn.Linear(d, d))
        self.dnn = None
        if dnn:
            layers = []
            for i in range(3):
                layers += [nn.Dropout(dropout), _xavier(nn.Linear(d, d))]
                if i < 2 or dnn_final_act:
                    layers.append(nn.ReLU())
            self.dnn = nn.Sequential(*layers)

    def forward(self, x, x_mask, y, y_mask):
        x, y = self.norm(masked_mean(x, x_mask)), self.norm(masked_mean(y, y_mask))
        if self.kind == "sum":
            out = self.w_x(x) + self.w_y(y)
        elif self.kind == "concat":
            out = self.w_o(torch.cat([x, y], dim=-1))
        elif self.kind == "film":
            gamma, beta = self.w_f(x).chunk(2, dim=-1)
            out = self.w_o(gamma * y + beta)
        else:
            out = self.w_o(torch.sigmoid(self.w_x(x)) * self.w_y(y))
        return self.dnn(out) if self.dnn is not None else out


def _bert_init(module):
    for m in module.modules():
        init_sasrec_weights(m)


def _bert_block(d, heads, dropout):
    return TransformerLayer(heads, d, 4 * d, dropout, dropout, "gelu", 1e-12)


class MergeAttentionFusion(nn.Module):
    """Self-attention over the concatenated text and image tokens, then the masked mean."""

    def __init__(self, d, n_layers=1, n_heads=12, dropout=0.1, type_embedding=True):
        super().__init__()
        self.type_embedding = nn.Embedding(2, d) if type_embedding else None
        self.blocks = nn.ModuleList([_bert_block(d, n_heads, dropout) for _ in range(n_layers)])
        _bert_init(self)

    def forward(self, x, x_mask, y, y_mask):
        if self.type_embedding is not None:
            x = x + self.type_embedding.weight[0]
            y = y + self.type_embedding.weight[1]
        h, mask = torch.cat([x, y], dim=1), torch.cat([x_mask, y_mask], dim=1)
        attn = _additive_mask(mask).to(h.dtype)
        for block in self.blocks:
            h = block(h, attn)
        return masked_mean(h, mask)


class CrossAttention(nn.Module):
    """BERT-style cross-attention: queries from one modality, keys/values from the other."""

    def __init__(self, d, n_heads, dropout):
        super().__init__()
        self.attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, query, context, context_mask):
        out, _ = self.attn(query, context, context, key_padding_mask=~context_mask,
                           need_weights=False)
        out = torch.nan_to_num(out)  # rows whose context is fully masked (no image)
        return self.norm(query + self.dropout(out))


class CoAttentionFusion(nn.Module):
    """LXMERT-order co-attention: shared cross-attention, then per-modality self-attn + FFN."""

    def __init__(self, d, n_layers=1, n_heads=12, dropout=0.1):
        super().__init__()
        self.type_embedding = nn.Embedding(2, d)
        self.cross = nn.ModuleList([CrossAttention(d, n_heads, dropout) for _ in range(n_layers)])
        self.text_self = nn.ModuleList([_bert_block(d, n_heads, dropout) for _ in range(n_layers)])
        self.image_self = nn.ModuleList([_bert_block(d, n_heads, dropout) for _ in range(n_layers)])
        self.w_o = nn.Linear(2 * d, d)
        _bert_init(self)
        for cross in self.cross:
            nn.init.normal_(cross.attn.in_proj_weight, std=0.02)
            nn.init.zeros_(cross.attn.in_proj_bias)

    def forward(self, x, x_mask, y, y_mask):
        x = x + self.type_embedding.weight[0]
        y = y + self.type_embedding.weight[1]
        x_attn = _additive_mask(x_mask).to(x.dtype)
        y_attn = _additive_mask(y_mask | ~y_mask.any(1, keepdim=True)).to(y.dtype)
        for cross, text_block, image_block in zip(self.cross, self.text_self, self.image_self):
            x, y = cross(x, y, y_mask), cross(y, x, x_mask)
            x, y = text_block(x, x_attn), image_block(y, y_attn)
        return self.w_o(torch.cat([masked_mean(x, x_mask), masked_mean(y, y_mask)], dim=-1))


def build_fusion(name, d, n_layers=1, n_heads=12, dropout=0.1, merge_type_emb=True,
                 dnn_final_act=True):
    """Fusion module by its yaml name (see ``FUSIONS``)."""
    if name in COARSE:
        return CoarseFusion(name, d, dropout=dropout)
    if name.endswith("_dnn") and name[:-4] in COARSE:
        return CoarseFusion(name[:-4], d, dnn=True, dropout=dropout, dnn_final_act=dnn_final_act)
    if name == "merge_attn":
        return MergeAttentionFusion(d, n_layers, n_heads, dropout, merge_type_emb)
    if name == "co_attn":
        return CoAttentionFusion(d, n_layers, n_heads, dropout)
    raise ConfigError(f"fusion must be one of {', '.join(FUSIONS)}; got {name!r}")
