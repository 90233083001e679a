"""Per-item modality feature files: parse the yaml declaration, load, validate, align.

A dataset yaml declares its modalities::

    multimodal_features:
      text:  {file: text_feat.npy}                 # row r belongs to item token str(r)
      image: {file: image_feat.npy, ids: image_ids.txt, dim: 4096}

``file`` is a 2-d float ``.npy`` array, relative to ``mm_feature_path`` (default
``<data_path>/<dataset>``). ``ids`` (optional) is a text file with one item token per line,
line r naming the item of row r; without it the file is indexed by integer token (MMRec's
convention). ``dim`` (optional) is checked. Items with no row, or with an all-zero row, are
marked missing in the presence mask; they never pass as real zero features.
"""
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from recbole_mm.errors import DatasetError


class FeatureFileError(DatasetError):
    """A feature file that cannot be used; the message names the file and the fix."""


@dataclass
class ModalitySpec:
    name: str
    file: str
    ids: str = None
    dim: int = None


def parse_feature_specs(declaration, feature_dir, selected=None, raw=()):
    """Turn the yaml ``multimodal_features`` mapping into a list of :class:`ModalitySpec`.

    ``selected`` (config key ``modalities``; ~ = all) restricts the list; a selected name must
    be declared here or be one of ``raw``, the modalities the dataset has as raw content only
    (item text, images), which have no feature file to load.
    """
    specs = []
    for name, entry in (declaration or {}).items():
        if isinstance(entry, str):
            entry = {"file": entry}
        if not isinstance(entry, dict) or "file" not in entry:
            raise FeatureFileError(
                f"multimodal_features['{name}'] must be a file name or {{file: NAME.npy}}; got {entry!r}."
            )
        unknown = set(entry) - {"file", "ids", "dim"}
        if unknown:
            raise FeatureFileError(
                f"multimodal_features['{name}'] has unknown keys {sorted(unknown)}; allowed: file, ids, dim."
            )
        ids = entry.get("ids")
        specs.append(
            ModalitySpec(
                name=str(name),
                file=os.path.join(feature_dir, entry["file"]),
                ids=os.path.join(feature_dir, ids) if ids else None,
                dim=entry.get("dim"),
            )
        )
    if selected is not None:
        if isinstance(selected, str):
            selected = [selected]
        known = [spec.name for spec in specs]
        missing = [name for name in selected if name not in known and name not in raw]
        if missing:
            raw_note = f" (raw content: {list(raw)})" if raw else ""
            raise FeatureFileError(
                f"unknown modality {missing} in config key 'modalities'; this dataset declares {known}{raw_note}. "
                "Fix: choose from those names, set modalities: ~ (all), or declare the file under "
                "multimodal_features."
            )
        specs = [spec for spec in specs if spec.name in selected]
    return specs


def configured_feature_specs(config):
    """The feature files a config selects: ``multimodal_features`` in ``mm_feature_path``,
    restricted to the config key ``modalities``."""
    from recbole_mm.data.raw_items import raw_modalities

    return parse_feature_specs(config["multimodal_features"], config["mm_feature_path"], config["modalities"],
                               raw=raw_modalities(config))
FEATURE_SUFFIX = "_feat.npy"


def discover_feature_files(folder):
    """``multimodal_features`` for a folder in MMRec layout: one modality per
    ``<modality>_feat.npy`` (named by the prefix, sorted by name), with ``<modality>_item_ids.txt``
    (or ``<modality>_ids.txt``) as its ids file when present, else row r = item token r.
    ``{}`` when there is none."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return {}
    declaration = {}
    for name in names:
        modality = name[: -len(FEATURE_SUFFIX)]
        if not name.endswith(FEATURE_SUFFIX) or not modality or not os.path.isfile(os.path.join(folder, name)):
            continue
        entry = {"file": name}
        ids = [f for f in (f"{modality}_item_ids.txt", f"{modality}_ids.txt") if os.path.isfile(os.path.join(folder, f))]
        if ids:
            entry["ids"] = ids[0]
        declaration[modality] = entry
    return declaration


def file_fingerprint(path):
    """Cheap identity of a file: path, size and modification time."""
    stat = os.stat(path)
    return f"{os.path.abspath(path)}:{stat.st_size}:{int(stat.st_mtime_ns)}"


def features_fingerprint(specs):
    digest = hashlib.sha1()
    for spec in specs:
        digest.update(spec.name.encode())
        digest.update(file_fingerprint(spec.file).encode())
        if spec.ids:
            digest.update(file_fingerprint(spec.ids).encode())
    return digest.hexdigest()


def _read_ids(path, n_rows, feature_file):
    if not os.path.isfile(path):
        raise FeatureFileError(f"id file {path} (rows of {feature_file}) not found. Fix: write one item token per line.")
    with open(path, encoding="utf-8") as handle:
        ids = [line.rstrip("\n") for line in handle]
    if ids and ids[-1] == "":
        ids.pop()
    if len(ids) != n_rows:
        raise FeatureFileError(
            f"{path} lists {len(ids)} item tokens but {feature_file} has {n_rows} rows. "
            "Fix: regenerate both files together (one token per feature row)."
        )
    if len(set(ids)) != len(ids):
        raise FeatureFileError(f"{path} lists an item token more than once. Fix: one line per item.")
    return ids


MANIFEST_PATTERNS = ("prepare_manifest.*.json", "features_manifest.json")


def check_against_manifest(path):
    """Refuse a file that recbole_mm wrote (a manifest next to it records its SHA-256) but whose
    bytes changed since: a damaged feature file is never used."""
    import glob
    import json

    from recbole_mm.utils import file_sha256

    folder, name = os.path.split(os.path.abspath(path))
    for pattern in MANIFEST_PATTERNS:
        for manifest in sorted(glob.glob(os.path.join(glob.escape(folder), pattern))):
            try:
                with open(manifest, encoding="utf-8") as handle:
                    expected = (json.load(handle).get("checksums") or {}).get(name)
            except (OSError, ValueError, AttributeError):
                continue
            if expected and file_sha256(path) != expected:
                rerun = ("rerun `python -m recbole_mm.prepare` for it (a damaged output is rebuilt)"
                         if "prepare_manifest" in manifest else "delete it to have it rebuilt")
                raise FeatureFileError(
                    f"{path} does not match the checksum {os.path.basename(manifest)} recorded when it was "
                    f"written (damaged or changed since). Fix: {rerun}; if you changed it on purpose, "
                    f"delete {manifest}.")


def load_aligned_features(spec, id_tokens):
    """Load ``spec.file`` and return (features [len(id_tokens), d] float32, present [len] bool).

    ``id_tokens`` is RecBole's ``field2id_token[item_id]``: index 0 is ``[PAD]``, index i the
    original token of internal id i. Row 0 is zero and marked absent.
    """
    if not os.path.isfile(spec.file):
        raise FeatureFileError(
            f"feature file for modality '{spec.name}' not found: {spec.file}. Fix: put the .npy file there "
            "(rows = items), or point mm_feature_path / multimodal_features at it."
        )
    check_against_manifest(spec.file)
    if spec.ids and os.path.isfile(spec.ids):
        check_against_manifest(spec.ids)
    try:
        raw = np.load(spec.file, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise FeatureFileError(f"cannot read {spec.file} as a .npy array ({err}). Fix: save it with numpy.save.") from None
    if raw.ndim != 2:
        raise FeatureFileError(
            f"{spec.file} has shape {raw.shape}; expected 2-d [items, dim]. Fix: reshape to one row per item."
        )
    if not np.issubdtype(raw.dtype, np.floating):
        raise FeatureFileError(f"{spec.file} has dtype {raw.dtype}; expected float. Fix: save as float32.")
    n_rows, dim = raw.shape
    if spec.dim is not None and dim != int(spec.dim):
        raise FeatureFileError(
            f"{spec.file} has dimension {dim} but the dataset yaml declares dim: {spec.dim} for '{spec.name}'. "
            "Fix: use the right file or correct dim."
        )
    if n_rows == 0:
        raise FeatureFileError(f"{spec.file} has no rows. Fix: write one row per item.")

    rows = np.full(len(id_tokens), -1, dtype=np.int64)
    if spec.ids:
        position = {token: r for r, token in enumerate(_read_ids(spec.ids, n_rows, spec.file))}
        for internal, token in enumerate(id_tokens):
            if internal:
                rows[internal] = position.get(str(token), -1)
    else:
        for internal, token in enumerate(id_tokens):
            if not internal:
                continue
            try:
                row = int(token)
            except (TypeError, ValueError):
                raise FeatureFileError(
                    f"{spec.file} has no id file, so item tokens must be integer row numbers, but token "
                    f"'{token}' is not. Fix: add ids: <file with one token per row> under "
                    f"multimodal_features['{spec.name}']."
                ) from None
            if row < 0:
                raise FeatureFileError(f"item token {token} is negative; cannot index {spec.file}.")
            rows[internal] = row
        if rows.max() >= n_rows:
            worst = int(rows.max())
            raise FeatureFileError(
                f"{spec.file} has {n_rows} rows but this dataset has item token {worst}, which needs row {worst}. "
                "Fix: the file must have one row per item token 0..max (MMRec layout), or add an ids file."
            )

    present = rows >= 0
    features = np.zeros((len(id_tokens), dim), dtype=np.float32)
    if present.any():
        features[present] = np.asarray(raw[rows[present]], dtype=np.float32)
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        first = int(rows[np.flatnonzero(bad)[0]])
        raise FeatureFileError(
            f"{spec.file} has NaN or inf values in {int(bad.sum())} used rows (first: row {first}). "
            "Fix: replace them (e.g. zero the row to mark the item's feature as missing)."
        )
    zero_rows = present & ~features.any(axis=1)
    present &= ~zero_rows
    present[0] = False
    if not present[1:].any():
        raise FeatureFileError(
            f"no item of this dataset has a feature row in {spec.file} (checked {len(id_tokens) - 1} items). "
            "Fix: the file does not belong to this dataset, or its ids file is wrong."
        )
    return features, present
