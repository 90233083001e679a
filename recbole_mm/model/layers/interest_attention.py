"""Interest-centralised attention and the Gumbel centre relation of MDSRec.

Li et al., *Multimodal Difference Learning for Sequential Recommendation*, AAAI 2025.

- :class:`CentreAttentionLayer` / :class:`InterestCentralisedAttention` implement Eq. 12-16:
  k interest centres (queries) attend over one modality tower's hidden states, layer by layer,
  re-using that tower's query/key/value projections (the paper shares them), followed by a
  small feed-forward map per layer (Eq. 15).
- :func:`centre_relation_weights` implements Eq. 19: a (Gumbel-)softmax over the centres of the
  similarity between a user's last state and its centre features; Eq. 18 then adds the
  weighted centres to the state (done by the caller).

The centre blocks own no query/key/value parameters: they receive the tower's
``recbole.model.layers.MultiHeadAttention`` module at call time.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.activation import activation

CENTER_FFN_CHOICES = ("literal", "residual")
CENTER_SCALE_CHOICES = ("head", "model")
GUMBEL_NOISE_CHOICES = ("logistic", "gumbel", "none")
GUMBEL_EVAL_CHOICES = ("soft", "hard", "sample")


class CentreAttentionLayer(nn.Module):
    """One layer of Eq. 12-15 for one modality.

    Args:
        hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps: as the tower's.
        center_ffn: ``literal`` = Eq. 15 as written, ``Z = act((g W1 + b1) W2 + b2)``;
            ``residual`` = a standard Transformer sub-layer pair (residual + LayerNorm around the
            attention output and around ``W2 act(W1 .)``).
        share_out_proj: use the tower layer's output projection (``dense``) as U of Eq. 14;
            False gives the centre block its own U.
        attn_scale: ``head`` divides scores by sqrt(d/h) (the shared weights were trained with
            that scale); ``model`` by sqrt(d), as Eq. 12 is printed.
    """

    def __init__(self, hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps,
                 center_ffn="literal", share_out_proj=True, attn_scale="head"):
        super().__init__()
        if center_ffn not in CENTER_FFN_CHOICES:
            raise ConfigError(f"config key 'center_ffn' must be one of {CENTER_FFN_CHOICES}, got {center_ffn!r}.")
        if attn_scale not in CENTER_SCALE_CHOICES:
            raise ConfigError(
                f"config key 'center_attn_scale' must be one of {CENTER_SCALE_CHOICES}, got {attn_scale!r}."
            )
        self.center_ffn = center_ffn
        self.attn_scale = attn_scale
        self.ffn_in = nn.Linear(hidden_size, inner_size)  # W1, b1
        self.ffn_out = nn.Linear(inner_size, hidden_size)  # W2, b2
        self.act = activation(hidden_act)
        self.out_proj = None if share_out_proj else nn.Linear(hidden_size, hidden_size)  # own U
        if center_ffn == "residual":
            self.attn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
            self.ffn_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
            self.dropout = nn.Dropout(hidden_dropout_prob)

    def forward(self, centres, states, pad_mask, tower_attention):
        """centres [B,k,d] (Z^{l-1}), or [k,d] when every row shares them (the first layer's Ê^m_c:
        projected once, not once per row); states [B,t,d] (H^{m,l-1}), pad_mask [B,1,1,t] additive
        (0 keep, large negative for PAD), tower_attention: the tower layer's MultiHeadAttention.
        Returns Z^l [B,k,d]."""
        att = tower_attention
        n_heads, head_size = att.num_attention_heads, att.attention_head_size

        def split_heads(x):  # [B,n,d] -> [B,h,n,d_h]
            return x.view(x.size(0), x.size(1), n_heads, head_size).permute(0, 2, 1, 3)

        query = split_heads(att.query(centres if centres.dim() == 3 else centres.unsqueeze(0)))
        key = split_heads(att.key(states))
        value = split_heads(att.value(states))
        scale = math.sqrt(head_size) if self.attn_scale == "head" else math.sqrt(n_heads * head_size)
        scores = torch.matmul(query, key.transpose(-1, -2)) / scale + pad_mask  # [B,h,k,t]
        probs = att.attn_dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).reshape(states.size(0), -1, n_heads * head_size)
        out_proj = att.dense if self.out_proj is None else self.out_proj  # U of Eq. 14
        if self.center_ffn == "literal":  # Eq. 15 as printed: act(((c U + u) W1 + b1) W2 + b2)
            return self.act(F.linear(context, *self.literal_map(out_proj)))
        g = out_proj(context)
        hidden = self.attn_norm(self.dropout(g) + centres)
        return self.ffn_norm(self.dropout(self.ffn_out(self.act(self.ffn_in(hidden)))) + hidden)

    def literal_map(self, out_proj):
        """(weight, bias) of the affine map c -> ((c U + u) W1 + b1) W2 + b2 of Eq. 14-15: three
        linear layers with no non-linearity between them compose to one d x d map, applied to
        the B*k centre rows once instead of three times (same function, float rounding aside)."""
        weight = self.ffn_out.weight @ self.ffn_in.weight @ out_proj.weight
        bias = self.ffn_out.weight @ (self.ffn_in.weight @ out_proj.bias + self.ffn_in.bias) + self.ffn_out.bias
        return weight, bias


class InterestCentralisedAttention(nn.Module):
    """L centre-attention layers for one modality (Eq. 12-16).

    Layer l uses the weights of tower layer l and attends over H^{m,l-1}, the input of that
    tower layer (H^{m,0} = the tower's embedding output).
    """

    def __init__(self, n_layers, hidden_size, inner_size, hidden_dropout_prob, hidden_act,
                 layer_norm_eps, center_ffn="literal", share_out_proj=True, attn_scale="head"):
        super().__init__()
        self.layers = nn.ModuleList(
            CentreAttentionLayer(hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps,
                                 center_ffn, share_out_proj, attn_scale)
            for _ in range(n_layers)
        )

    def forward(self, centre_features, tower_inputs, pad_mask, tower_encoder):
        """centre_features [k,d] (Ê^m_c, Eq. 11); tower_inputs: list of L tensors [B,t,d], the
        input of each tower layer; tower_encoder: RecBole TransformerEncoder of the modality.
        Returns E^m_c [B,k,d]."""
        centres = centre_features  # [k,d], shared by every row until the first layer
        for layer, states, tower_layer in zip(self.layers, tower_inputs, tower_encoder.layer):
            centres = layer(centres, states, pad_mask, tower_layer.multi_head_attention)
        return centres if centres.dim() == 3 else centres.expand(tower_inputs[0].size(0), -1, -1)


def relation_noise(shape, kind, device=None, dtype=torch.float32):
    """Noise added to the centre logits in Eq. 19.

    ``logistic``: log d - log(1-d), d ~ U(0,1) (Eq. 19 as printed); ``gumbel``: -log(-log d)
    (Jang et al.); ``none``: zeros. d is clamped to [1e-10, 1-1e-10]."""
    if kind not in GUMBEL_NOISE_CHOICES:
        raise ConfigError(f"config key 'gumbel_noise' must be one of {GUMBEL_NOISE_CHOICES}, got {kind!r}.")
    if kind == "none":
        return torch.zeros(shape, device=device, dtype=dtype)
    uniform = torch.rand(shape, device=device, dtype=dtype).clamp(1e-10, 1 - 1e-10)
    if kind == "logistic":
        return torch.log(uniform) - torch.log1p(-uniform)
    return -torch.log(-torch.log(uniform))


def _one_hot_straight_through(soft):
    hard = F.one_hot(soft.argmax(dim=-1), soft.size(-1)).to(soft.dtype)
    return hard - soft.detach() + soft


def centre_relation_weights(logits, tau, noise="logistic", hard=False, training=True, eval_mode="soft"):
    """gamma of Eq. 19, [B,k], rows summing to one.

    Training: softmax((logits + noise) / tau); ``hard`` makes it a straight-through one-hot
    (forward one-hot, gradient of the soft weights).
    Inference (``training=False``), ``eval_mode``: ``soft`` = softmax(logits / tau) without noise
    (deterministic, the default); ``hard`` = one-hot of the arg-max centre; ``sample`` = as in
    training (noisy, ``hard`` respected).
    """
    if tau <= 0:
        raise ConfigError(f"config key 'gumbel_tau' must be > 0, got {tau!r}.")
    if eval_mode not in GUMBEL_EVAL_CHOICES:
        raise ConfigError(f"config key 'gumbel_eval' must be one of {GUMBEL_EVAL_CHOICES}, got {eval_mode!r}.")
    if not training and eval_mode != "sample":
        soft = torch.softmax(logits / tau, dim=-1)
        return _one_hot_straight_through(soft) if eval_mode == "hard" else soft
    soft = torch.softmax((logits + relation_noise(logits.shape, noise, logits.device, logits.dtype)) / tau, dim=-1)
    return _one_hot_straight_through(soft) if hard else soft
