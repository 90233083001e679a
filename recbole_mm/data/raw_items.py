"""Per-item raw text and images for ID-agnostic models (IDAgnosticMMSR).

Everything is aligned to RecBole's internal item ids through
``dataset.field2id_token[iid_field]`` (index 0 is ``[PAD]``).

Dataset yaml keys read here (all optional):

* ``item_text_file``: tab-separated atomic file with an item-id column (named like the
  dataset's ``ITEM_ID_FIELD``) and text columns, relative to ``data_path`` or absolute.
  Default: ``<dataset>.text`` if it exists, else ``<dataset>.item`` (ml-100k: title, year, genres).
* ``item_text_fields``: the columns joined (with spaces) into one text; default: every
  column but the item id. Relative paths are looked up in ``mm_feature_path``, then ``data_path``.
* ``item_image_dir``: folder (relative to ``data_path`` or absolute) holding
  ``<item token>.jpg|.jpeg|.png|.webp``. Items without a file have no image: their image
  tokens are masked out in fusion (documented fallback; the paper's datasets all have images).
"""

import hashlib
import os
import re

import numpy as np
import pandas as pd
import torch

from recbole_mm.errors import DatasetError, MissingFileError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def _item_tokens(dataset):
    return list(dataset.field2id_token[dataset.iid_field])


def _resolve(config, name):
    """Absolute ``name``, else the first of ``<mm_feature_path>/name``, ``<data_path>/name``
    that exists (the first candidate when none does)."""
    path = os.path.expanduser(str(name))
    if os.path.isabs(path):
        return path
    folders = [config[k] for k in ("mm_feature_path", "data_path") if k in config and config[k]]
    candidates = [os.path.join(folder, path) for folder in folders]
    return next((c for c in candidates if os.path.exists(c)), candidates[0])


def _read_atomic(path):
    frame = pd.read_csv(path, sep="\t", dtype=str, quoting=3, keep_default_na=False,
                        encoding="utf-8")
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def default_text_file(config):
    for ext in (".text", ".item"):
        path = os.path.join(config["data_path"], f"{config['dataset']}{ext}")
        if os.path.isfile(path):
            return path
    return None


def _text_file(config):
    """The configured or default item-text path (None when no default file exists)."""
    name = config["item_text_file"] if "item_text_file" in config else None
    return _resolve(config, name) if name else default_text_file(config)


def raw_modalities(config):
    """Modalities the dataset has as raw content: ``text`` when its item-text file exists,
    ``image`` when ``item_image_dir`` is set."""
    found = []
    path = _text_file(config)
    if path is not None and os.path.isfile(path):
        found.append("text")
    if "item_image_dir" in config and config["item_image_dir"]:
        found.append("image")
    return found


def load_item_texts(config, dataset):
    """List of ``item_num`` strings aligned to internal ids ('' for PAD and items without text)."""
    path = _text_file(config)
    if path is None or not os.path.isfile(path):
        raise MissingFileError(
            f"No item text for dataset {config['dataset']!r}: looked for "
            f"{path or os.path.join(config['data_path'], config['dataset'] + '.text')}. Set "
            "item_text_file (a tab-separated file with item_id:token and text columns) in the "
            "dataset yaml, or use modalities: [image].")
    frame = _read_atomic(path)
    iid = dataset.iid_field
    if iid not in frame.columns:
        raise DatasetError(f"item_text_file {path} has no column {iid!r} (columns: {list(frame.columns)})")
    fields = config["item_text_fields"] if "item_text_fields" in config else None
    fields = list(fields) if fields else [c for c in frame.columns if c != iid]
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise DatasetError(f"item_text_fields {missing} not in {path} (columns: {list(frame.columns)})")
    joined = frame[fields].astype(str).agg(" ".join, axis=1).str.strip()
    by_token = dict(zip(frame[iid], joined))
    return [""] + [by_token.get(tok, "") for tok in _item_tokens(dataset)[1:]]


def load_item_image_paths(config, dataset):
    """List of ``item_num`` image paths (``None`` for PAD and items without an image)."""
    name = config["item_image_dir"] if "item_image_dir" in config else None
    if not name:
        raise MissingFileError(
            f"modality needs images but dataset {config['dataset']!r} has no item_image_dir: set "
            "item_image_dir (folder of <item token>.jpg/.png) in the dataset yaml, or use "
            "modalities: [text].")
    folder = _resolve(config, name)
    if not os.path.isdir(folder):
        raise MissingFileError(f"item_image_dir {folder!r} is not a folder")
    files = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(folder))
             if f.lower().endswith(IMAGE_EXTENSIONS)}
    paths = [None] + [os.path.join(folder, files[t]) if t in files else None
                      for t in _item_tokens(dataset)[1:]]
    return paths


class HashWordTokenizer:
    """Deterministic word tokenizer for randomly initialised text encoders (no vocab file):
    ids ``[CLS]=1, [SEP]=2, words -> 3 + md5(word) % (vocab_size - 3)``, pad 0."""

    def __init__(self, vocab_size):
        self.vocab_size = vocab_size

    def encode(self, text, max_len):
        words = re.findall(r"\w+", text)
        ids = [3 + int(hashlib.md5(w.encode()).hexdigest()[:8], 16) % (self.vocab_size - 3)
               for w in words]
        return [1] + ids[: max_len - 2] + [2]


def tokenize_texts(texts, tokenizer, max_len, lowercase=True):
    """Tokenise once into ``(ids int32 [n, max_len], mask bool [n, max_len])``, right-padded.
    PAD (row 0) and empty texts keep only the special tokens (CLS-only text)."""
    texts = [t.lower() if lowercase else t for t in texts]
    ids = np.zeros((len(texts), max_len), dtype=np.int32)
    mask = np.zeros((len(texts), max_len), dtype=bool)
    if isinstance(tokenizer, HashWordTokenizer):
        rows = [tokenizer.encode(t, max_len) for t in texts]
    else:
        rows = tokenizer(texts, max_length=max_len, truncation=True, padding=False)["input_ids"]
        pad = tokenizer.pad_token_id or 0
        ids[:] = pad
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


class ImageStore:
    """Item images decoded and resized once (no crop) into a uint8 array ``[n, 3, S, S]``.

    Built from paths (decoded lazily, memory-mapped under ``cache_dir`` when given) or from a
    ready tensor (tests). ``has_image[i]`` is False for PAD and items without an image.
    """

    def __init__(self, paths=None, image_size=224, images=None, cache_dir=None):
        self.image_size = image_size
        if images is not None:
            images = torch.as_tensor(images)
            if images.dtype != torch.uint8:
                images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
            self.n_items = images.shape[0]
            self.array = images.numpy()
            self.paths = [None] * self.n_items
            self.has_image = images.flatten(1).any(1).bool()
            self.has_image[0] = False
            self.loaded = np.ones(self.n_items, dtype=bool)
            return
        self.paths = list(paths)
        self.n_items = len(self.paths)
        self.has_image = torch.tensor([p is not None for p in self.paths], dtype=torch.bool)
        shape = (self.n_items, 3, image_size, image_size)
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            key = hashlib.md5(repr((self.paths, image_size)).encode()).hexdigest()[:16]
            file = os.path.join(cache_dir, f"images-{key}.u8")
            mode = "r+" if os.path.isfile(file) else "w+"
            self.array = np.memmap(file, dtype=np.uint8, mode=mode, shape=shape)
        else:
            self.array = np.zeros(shape, dtype=np.uint8)
        self.loaded = ~self.has_image.numpy()

    def _decode(self, path):
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)

    def pixels(self, item_ids):
        rows = item_ids.cpu().numpy()
        for i in np.unique(rows[~self.loaded[rows]]):
            self.array[i] = self._decode(self.paths[i])
            self.loaded[i] = True
        return torch.from_numpy(np.ascontiguousarray(self.array[rows]))
