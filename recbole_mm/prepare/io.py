"""Shared helpers of the converters: atomic writes, input checks, manifests, progress bars."""
import hashlib
import json
import os
import sys

import numpy as np

from recbole_mm.errors import RecBoleMMError
from recbole_mm.utils import atomic_write as _atomic_write
from recbole_mm.utils import damaged_outputs, output_checksums

DATASET_YAML_HEADER = """\
# Config of dataset {name}, written by `python -m recbole_mm.prepare`. recbole_mm reads it for
# --dataset={name} with data_path = the folder above this one: after its packaged defaults, before
# your config files, config_dict and the command line. Prepare commands rewrite only the keys they
# own (each feature command its modality under multimodal_features); other keys you add are kept.
"""

class PrepareError(RecBoleMMError, ValueError):
    """Bad input for a converter; the message names the file and the fix."""


def progress(iterable=None, total=None, desc=None, enabled=True, unit="it", initial=0):
    """A tqdm bar on stderr (silent when ``enabled`` is False or stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, initial=initial,
                disable=not enabled or None, leave=False)


def atomic_write(path, writer, binary=False):
    """Call ``writer(f)`` on a temp file next to ``path``, fsync, then ``os.replace`` it."""
    _atomic_write(path, writer, binary=binary)


def atomic_save_npy(path, array):
    atomic_write(path, lambda f: np.save(f, array), binary=True)


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text))


def file_digest(path, chunk=1 << 20):
    """SHA-1 of a file's bytes (identity of a source file in the manifest)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def manifest_name(command):
    return f"prepare_manifest.{command}.json"


def manifest_matches(out_dir, expected, command):
    """True when ``out_dir`` holds a manifest equal to ``expected`` and every output it lists still
    has the checksum recorded there (a damaged output is rebuilt, with a warning)."""
    path = os.path.join(out_dir, manifest_name(command))
    try:
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
    except (OSError, ValueError):
        return False
    if found.get("inputs") != expected.get("inputs"):
        return False
    if not all(os.path.isfile(os.path.join(out_dir, name)) for name in found.get("outputs", [])):
        return False
    damaged = damaged_outputs(out_dir, found.get("checksums"))
    if damaged or "checksums" not in found:
        reason = f"{', '.join(damaged)} changed since" if damaged else "no checksums recorded by"
        print(f"warning: {out_dir}: {reason} the last run; rebuilding", file=sys.stderr)
        return False
    return True


def write_manifest(out_dir, manifest, command):
    """Write the manifest with the SHA-256 of every output (checked by :func:`manifest_matches`
    and, for feature files, by the dataset loader)."""
    manifest = {**manifest, "checksums": output_checksums(out_dir, manifest.get("outputs", []))}
    atomic_write_text(os.path.join(out_dir, manifest_name(command)),
                      json.dumps(manifest, indent=2, sort_keys=True))


def require_file(path, what, fix):
    if not os.path.isfile(path):
        raise PrepareError(f"{what} not found: {path}. Fix: {fix}")
    return path


def load_feature_matrix(path, min_rows=None, name=None):
    """Load a 2-D float ``.npy`` (float32 result) with one clear error per problem."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # noqa: BLE001
        raise PrepareError(f"cannot read {path} as a .npy array ({err}). "
                           "Fix: save it with numpy.save.") from None
    if arr.ndim != 2:
        raise PrepareError(f"{path} has shape {arr.shape}; expected [items, dim]. Fix: one row per item.")
    if not np.issubdtype(arr.dtype, np.floating):
        raise PrepareError(f"{path} has dtype {arr.dtype}; expected float. Fix: save it as float32.")
    if min_rows is not None and arr.shape[0] < min_rows:
        raise PrepareError(
            f"{path} has {arr.shape[0]} rows but the interactions use item ids up to {min_rows - 1}. "
            f"Fix: row i must hold the {name or 'feature'} of item i; use the feature file that belongs "
            "to this .inter file.")
    out = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise PrepareError(f"{path} contains NaN or infinite values. Fix: clean or recompute the features.")
    return out


def read_atomic_header(path):
    """Field names (before ':') and full header entries of a RecBole atomic file."""
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").rstrip("\r").split("\t")
    return [h.split(":")[0] for h in header], header


def dataset_yaml_path(out_dir, name):
    return os.path.join(out_dir, f"{name}.yaml")


def update_dataset_yaml(out_dir, name, settings=None, features=None):
    """Write ``<out_dir>/<name>.yaml``, the dataset's own config that recbole_mm's Config reads for
    ``--dataset=name``: ``settings`` replace top-level keys, ``features`` (modality -> entry) are
    merged into ``multimodal_features``; every other key already in the file is kept. Returns
    the file name (for the manifest's outputs)."""
    import yaml

    path = dataset_yaml_path(out_dir, name)
    current = {}
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                current = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise PrepareError(f"{path} is not valid yaml ({err}). Fix: repair or delete it, then rerun.") from None
        if not isinstance(current, dict):
            raise PrepareError(f"{path} must hold a mapping of key: value pairs. Fix: repair or delete it.")
    current.update(settings or {})
    if features:
        declared = current.get("multimodal_features") or {}
        declared.update(features)
        current["multimodal_features"] = declared
    body = yaml.safe_dump(current, sort_keys=False, default_flow_style=None, allow_unicode=True)
    atomic_write_text(path, DATASET_YAML_HEADER.format(name=name) + body)
    return os.path.basename(path)


def feature_entry(output, ids_name=None, dim=None):
    """``(modality, entry)`` declaring the feature file ``output``: ``text_feat.npy`` is modality
    ``text`` (the ``<modality>_feat.npy`` convention), any other file its stem."""
    stem = output[:-4] if output.endswith(".npy") else output
    modality = stem[:-5] if stem.endswith("_feat") and len(stem) > 5 else stem
    entry = {"file": output}
    if ids_name:
        entry["ids"] = ids_name
    if dim is not None:
        entry["dim"] = int(dim)
    return modality, entry
