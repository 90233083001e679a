"""Text and vision encoder towers for ID-agnostic recommenders (Li et al. 2023, §3.1, App. F).

Encoders come from ``encoder_blocks.py`` (local loading, block discovery, bottom freezing).
:class:`EncoderTower` adds a per-item cache of the frozen part: ``k == 0`` caches the final
token outputs; ``0 < k < n`` caches the input of the first trainable block when the blocks form
one flat list (BERT-like, ViT-like); otherwise it is disabled with a warning.
:class:`TextTower` and :class:`VisionTower` supply the per-item raw inputs.
"""

import json
import logging
import os
from contextlib import contextmanager

import torch
from torch import nn

from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.encoder_blocks import find_blocks, freeze_bottom, frozen_modules

logger = logging.getLogger(__name__)

IMAGE_NORMS = {"half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
               "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


class _StopForward(Exception):
    """Raised by a hook once the input of the first trainable block is captured."""


class EncoderTower(nn.Module):
    """An encoder plus a per-item cache of its frozen part.

    ``forward(item_ids)`` returns ``(tokens, mask)``: tokens ``[B,T,h]`` (or a ``[B,C,H,W]``
    grid for CNNs) and a bool mask ``[B,T]``. The cache is a plain attribute, never a buffer,
    so the state_dict does not depend on the number of items.
    """

    def __init__(self, model, n_finetune, block_path=None, cache_frozen=True, cache_device="cpu",
                 cache_dtype="float16"):
        super().__init__()
        self.model = model
        self.blocks = find_blocks(model, block_path)
        self.n_finetune = n_finetune
        self.n_frozen_params = freeze_bottom(model, self.blocks, n_finetune)
        self._frozen = frozen_modules(model)
        self.cache_device = torch.device(cache_device)
        self.cache_dtype = getattr(torch, str(cache_dtype))
        self.cache_mode = self._choose_cache_mode() if cache_frozen else None
        self._cache, self._filled = None, None
        self.forward_calls = 0  # encoder runs on stored items (tests count them)

    def train(self, mode=True):
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def _flat_block_list(self):
        return any(isinstance(m, nn.ModuleList) and len(m) == len(self.blocks)
                   and all(a is b for a, b in zip(m, self.blocks)) for m in self.model.modules())

    def _choose_cache_mode(self):
        n, k = len(self.blocks), self.n_finetune
        if not self.deterministic_input():
            logger.warning("cache_frozen disabled for %s: its input is random in training "
                           "(e.g. MAE masking)", type(self.model).__name__)
            return None
        if k == 0:
            return "output"
        if k < 0 or k >= n:
            return None
        if not (self._flat_block_list() and self.flat_family()):
            logger.warning("cache_frozen: caching the input of block %d is supported for BERT-like "
                           "and ViT-like encoders only (got %s); the frozen part runs every step",
                           n - k, type(self.model).__name__)
            return None
        return "block_input"

    def deterministic_input(self):
        return True

    def flat_family(self):
        return True

    def clear_cache(self):
        self._cache, self._filled = None, None

    def _cached_rows(self, item_ids, compute):
        n_items = self.n_items()
        ids = item_ids.to(self.cache_device)
        if self._cache is None:
            missing = ids.unique()
        else:
            missing = ids[~self._filled[ids]].unique()
        if missing.numel() > 0:
            with torch.no_grad():
                values = compute(missing.to(item_ids.device))
            if self._cache is None:
                self._cache = torch.zeros((n_items,) + tuple(values.shape[1:]), dtype=self.cache_dtype,
                                          device=self.cache_device)
                self._filled = torch.zeros(n_items, dtype=torch.bool, device=self.cache_device)
            self._cache[missing] = values.to(self.cache_device, self.cache_dtype)
            self._filled[missing] = True
        return self._cache[ids].to(item_ids.device, torch.float32)

    @contextmanager
    def _top_only(self, hidden):
        """Frozen block 0 returns the cached ``hidden``; the other frozen blocks pass through."""
        n_frozen = len(self.blocks) - self.n_finetune

        def first(*args, **kwargs):
            return hidden

        def passthrough(*args, **kwargs):
            return args[0] if args else kwargs["hidden_states"]

        for i in range(n_frozen):
            self.blocks[i].forward = first if i == 0 else passthrough
        try:
            yield
        finally:
            for i in range(n_frozen):
                del self.blocks[i].forward

    def _block_input(self, inputs):
        captured = {}

        def hook(module, args, kwargs):
            captured["h"] = args[0] if args else kwargs["hidden_states"]
            raise _StopForward

        block = self.blocks[len(self.blocks) - self.n_finetune]
        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.model(**inputs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured["h"]

    def forward(self, item_ids):
        self.forward_calls += 1
        if self.cache_mode == "output":
            tokens = self._cached_rows(item_ids, lambda m: self.run(self.raw_inputs(m, False))[0])
            mask = self.item_mask(item_ids, tokens.shape[1])
            return tokens[:, : mask.shape[1]], mask
        if self.cache_mode == "block_input":
            hidden = self._cached_rows(item_ids, lambda m: self._block_input(self.raw_inputs(m, False)))
            inputs = self.placeholder_inputs(item_ids)
            hidden = hidden[:, : self.input_length(inputs, hidden.shape[1])]
            dtype = next(self.model.parameters()).dtype
            with self._top_only(hidden.to(dtype)):
                return self.run(inputs)
        return self.run(self.raw_inputs(item_ids))

    # subclasses -------------------------------------------------------------
    def n_items(self):
        raise NotImplementedError

    def raw_inputs(self, item_ids, trim=True):
        raise NotImplementedError

    def placeholder_inputs(self, item_ids):
        return self.raw_inputs(item_ids)

    def input_length(self, inputs, full_length):
        return full_length

    def item_mask(self, item_ids, length):
        return torch.ones(len(item_ids), length, dtype=torch.bool, device=item_ids.device)

    def run(self, inputs):
        raise NotImplementedError


class TextTower(EncoderTower):
    """Text encoder over pre-tokenised item texts (``token_ids`` int32 ``[n_items, L]``)."""

    def __init__(self, model, token_ids, token_mask, **kwargs):
        super().__init__(model, **kwargs)
        self.token_ids, self.token_mask = token_ids, token_mask

    def n_items(self):
        return self.token_ids.shape[0]

    def _batch(self, ids, mask, trim):
        if trim:  # drop columns that are padding for every row (exact: pads are masked)
            length = max(int(mask.sum(1).max()), 1)
            ids, mask = ids[:, :length], mask[:, :length]
        return {"input_ids": ids.long(), "attention_mask": mask.long()}

    def raw_inputs(self, item_ids, trim=True):
        rows = item_ids.to(self.token_ids.device)
        return {k: v.to(item_ids.device) for k, v in
                self._batch(self.token_ids[rows], self.token_mask[rows], trim).items()}

    def input_length(self, inputs, full_length):
        return inputs["input_ids"].shape[1]

    def item_mask(self, item_ids, length):
        mask = self.token_mask[item_ids.to(self.token_mask.device)].to(item_ids.device)
        return mask[:, : max(int(mask.sum(1).max()), 1)]

    def encode_tokens(self, ids, mask):
        """Encode token ids that are not in the item store (cold-start items)."""
        return self.run(self._batch(ids, mask, True))

    def run(self, inputs):
        out = self.model(**inputs).last_hidden_state
        return out, inputs["attention_mask"].bool()


class VisionTower(EncoderTower):
    """Vision encoder over an :class:`recbole_mm.data.raw_items.ImageStore`.

    ViT-MAE masks ``mae_mask_ratio`` of the patches at random in training. In evaluation
    ``mae_eval_mask: none`` keeps every patch in order; ``fixed`` applies the training ratio
    with noise seeded per item (the official code keeps random masking at evaluation, which
    makes evaluation random). A CNN's ``[B,C,H,W]`` output stays a grid with ``keep_grid``
    (for :class:`TokenProjection` ``grid=True``), else becomes ``H*W`` tokens ``[B,H*W,C]``
    whose mean is the CNN's pooled vector.
    """

    def __init__(self, model, image_store, image_norm="auto", local_dir=None,
                 mae_mask_ratio=0.75, mae_eval_mask="none", keep_grid=False, **kwargs):
        self.is_mae = type(model).__name__.startswith("ViTMAE")
        self.keep_grid = keep_grid
        self.mae_mask_ratio = float(mae_mask_ratio) if self.is_mae else 0.0
        self.mae_eval_mask = mae_eval_mask
        super().__init__(model, **kwargs)
        self.store = image_store
        mean, std = self._norm(image_norm, local_dir)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _norm(image_norm, local_dir):
        if image_norm == "auto":
            proc = os.path.join(local_dir or "", "preprocessor_config.json")
            if local_dir and os.path.isfile(proc):
                with open(proc) as f:
                    cfg = json.load(f)
                if "image_mean" in cfg and "image_std" in cfg:
                    return cfg["image_mean"], cfg["image_std"]
            return IMAGE_NORMS["half"]
        if image_norm not in IMAGE_NORMS:
            raise ConfigError(f"image_norm must be auto, half or imagenet, got {image_norm!r}")
        return IMAGE_NORMS[image_norm]

    def deterministic_input(self):
        return self.mae_mask_ratio == 0.0

    def flat_family(self):
        return not type(self.model).__name__.startswith(("Swin", "ResNet", "ConvNext"))

    def n_items(self):
        return self.store.n_items

    def _mae_args(self, item_ids, n_patches):
        if not self.is_mae:
            return {}
        ratio = self.mae_mask_ratio if (self.training or self.mae_eval_mask == "fixed") else 0.0
        self.model.config.mask_ratio = ratio
        self.model.embeddings.config.mask_ratio = ratio
        if self.training:
            return {}
        if self.mae_eval_mask == "fixed":
            noise = torch.stack([torch.rand(n_patches, generator=torch.Generator().manual_seed(int(i)))
                                 for i in item_ids.tolist()])
        else:
            noise = torch.arange(n_patches, dtype=torch.float32).expand(len(item_ids), -1)
        return {"noise": noise.to(item_ids.device)}

    def pixel_inputs(self, pixels, item_ids):
        x = (pixels.float() / 255.0 - self.mean) / self.std
        n_patches = getattr(self.model.embeddings, "num_patches", None) if self.is_mae else 0
        if self.is_mae and n_patches is None:
            n_patches = self.model.embeddings.patch_embeddings.num_patches
        return {"pixel_values": x, **self._mae_args(item_ids, n_patches)}

    def raw_inputs(self, item_ids, trim=True):
        return self.pixel_inputs(self.store.pixels(item_ids).to(item_ids.device), item_ids)

    def placeholder_inputs(self, item_ids):
        size = self.store.image_size
        zeros = torch.zeros(len(item_ids), 3, size, size, dtype=torch.uint8, device=item_ids.device)
        return self.pixel_inputs(zeros, item_ids)

    def item_mask(self, item_ids, length):
        has = self.store.has_image[item_ids.to(self.store.has_image.device)].to(item_ids.device)
        return has.unsqueeze(1).expand(-1, length)

    def run(self, inputs):
        out = self.model(**inputs).last_hidden_state
        if out.dim() == 4 and not self.keep_grid:
            out = out.flatten(2).transpose(1, 2)
        length = out.shape[1] if out.dim() == 3 else out.shape[2] * out.shape[3]
        return out, torch.ones(out.shape[0], length, dtype=torch.bool, device=out.device)

    def forward(self, item_ids):
        tokens, mask = super().forward(item_ids)
        length = tokens.shape[1] if tokens.dim() == 3 else tokens.shape[2] * tokens.shape[3]
        return tokens, self.item_mask(item_ids, length)  # items without an image: all False


class TokenProjection(nn.Module):
    """Per-token ``W: h -> d`` (xavier-normal, zero bias). A CNN grid ``[B,C,H,W]`` goes
    through Conv3x3(C->d, no bias) + ReLU and becomes ``H*W`` tokens (paper footnote 7)."""

    def __init__(self, in_dim, out_dim, grid=False):
        super().__init__()
        self.grid = grid
        if grid:
            self.proj = nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False)
        else:
            self.proj = nn.Linear(in_dim, out_dim)
            nn.init.zeros_(self.proj.bias)
        nn.init.xavier_normal_(self.proj.weight)

    def forward(self, tokens):
        if self.grid:
            return torch.relu(self.proj(tokens)).flatten(2).transpose(1, 2)
        return self.proj(tokens)
