"""MultimodalSequentialDataset: RecBole's SequentialDataset plus per-item modality features.

After RecBole has loaded, filtered and remapped the data (``super().__init__``), every declared
feature file is loaded and aligned to RecBole's internal item ids through
``field2id_token[item_id]`` (row 0 = padding), with a presence mask per modality. The training
split exposes its user-item interactions and time-ordered sequences for the graph builders,
so no graph ever sees validation or test interactions. See ``docs/architecture.md``.
"""
import hashlib
import json
import os
import pickle

import numpy as np
import scipy.sparse as sp
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_mm.data.features import (configured_feature_specs, features_fingerprint, file_fingerprint,
                                      load_aligned_features)
from recbole_mm.errors import DatasetError
from recbole_mm.utils import writable_folder, write_sealed

TARGET_POSITION_FIELD = "mm_target_position"


def describe_unreadable_atomic_file(path, config, error):
    """Why RecBole could not read the atomic file ``path``: a header entry that is not ``name:type``
    or a numeric column holding text (first offending row); else RecBole's own message."""
    import pandas as pd

    separator, encoding = config["field_separator"], config["encoding"] or "utf-8"
    with open(path, encoding=encoding) as handle:
        header = handle.readline().rstrip("\r\n").split(separator)
    types = ("token", "token_seq", "float", "float_seq")
    for entry in header:
        if entry.count(":") != 1 or entry.split(":")[1] not in types:
            return (f"{path}: header entry '{entry}' is not name:type with type one of {', '.join(types)}. "
                    "Fix: correct the first line of the file (tab-separated name:type entries).")
    frame = pd.read_csv(path, delimiter=separator, dtype=str, encoding=encoding, keep_default_na=False,
                        engine="python")
    for entry in header:
        name, kind = entry.split(":")
        if not kind.startswith("float"):
            continue
        values = frame[entry].str.split(config["seq_separator"]).explode() if kind == "float_seq" else frame[entry]
        values = values[values.str.strip() != ""]
        bad = values[pd.to_numeric(values, errors="coerce").isna()]
        if len(bad):
            row = int(bad.index[0]) + 2  # 1-based, after the header line
            return (f"{path}: column '{name}' is declared {kind} but line {row} holds {bad.iloc[0]!r}. "
                    f"Fix: numbers only in that column (or declare it {name}:token if it is not a number).")
    return f"{path} cannot be read ({error}). Fix: check its header (name:type) and values."


def saved_dataset_path(config):
    """Where :meth:`MultimodalSequentialDataset.save` writes (RecBole's file name)."""
    return os.path.join(config["checkpoint_dir"], f"{config['dataset']}-MultimodalSequentialDataset.pth")


def dataset_fingerprint(config):
    """Identity of everything a filtered dataset is built from: RecBole's dataset arguments, the
    atomic files (``<data_path>/<dataset>.*``) and the feature files (path, size, mtime)."""
    from recbole.utils.argument_list import dataset_arguments

    def value(key):
        try:
            return config[key]
        except KeyError:
            return None

    specs = configured_feature_specs(config)
    data_path, name = config["data_path"], config["dataset"]
    atomic = sorted(f for f in os.listdir(data_path) if f.startswith(name + ".")) if os.path.isdir(data_path) else []
    identity = {
        "class": "MultimodalSequentialDataset/1",
        "arguments": {key: value(key) for key in sorted(set(dataset_arguments) | {"seed", "repeatable"})},
        "atomic_files": [file_fingerprint(os.path.join(data_path, f)) for f in atomic],
        "features": features_fingerprint(specs) if specs else "no-features",
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]


class MultimodalSequentialDataset(SequentialDataset):
    """Sequential dataset with aligned multimodal item features.

    Attributes (see ``docs/architecture.md`` for the full contract):
        modalities: modality names, in the order of the yaml declaration.
        item_features: ``{name: FloatTensor[item_num, d]}``; PAD and missing rows are zero.
        item_feature_mask: ``{name: BoolTensor[item_num]}``; False for PAD and missing features.
        split_name: ``'full'`` before ``build()``, then ``'train'``, ``'valid'`` or ``'test'``.
    """

    def __init__(self, config):
        super().__init__(config)
        if len(self.inter_feat) == 0:
            self._raise_empty()
        self.split_name = "full"
        self._user_sequence_ptr = None  # filled by data_augmentation() inside build()
        self._load_features(config)

    def save(self):
        """RecBole's filtered-dataset cache (``save_dataset: true``), sealed with a checksum and
        the :func:`dataset_fingerprint` it was built from; ``quick_start.create_dataset`` loads it
        only when both match."""
        path = saved_dataset_path(self.config)
        write_sealed(path, pickle.dumps(self, protocol=4), dataset_fingerprint(self.config))
        self.logger.info(f"Saving filtered dataset into [{path}]")

    def _load_feat(self, filepath, source):
        """RecBole's atomic-file reader; a file it cannot parse becomes a :class:`DatasetError`
        naming the file, the column and the first bad row (RecBole raises a bare ValueError)."""
        try:
            return super()._load_feat(filepath, source)
        except ValueError as err:
            raise DatasetError(describe_unreadable_atomic_file(filepath, self.config, err)) from None

    def _raise_empty(self):
        config = self.config
        raise DatasetError(
            f"dataset '{config['dataset']}' has no usable sequences after filtering "
            f"(user_inter_num_interval={config['user_inter_num_interval']}, "
            f"item_inter_num_interval={config['item_inter_num_interval']}, "
            f"val_interval={config['val_interval']}). Fix: loosen the filters or check the .inter file."
        )

    def _reset_index(self):
        if any(getattr(self, name).empty for name in self.feat_name_list):
            self._raise_empty()
        super()._reset_index()

    # ------------------------------------------------------------------ features
    def _load_features(self, config):
        feature_dir = config["mm_feature_path"]
        builder = config["mm_feature_builder"]
        if builder:
            from recbole_mm.data.default import ensure_features

            ensure_features(builder, config, feature_dir)
        specs = configured_feature_specs(config)
        tokens = self.field2id_token[self.iid_field]
        self.modalities = [spec.name for spec in specs]
        self.item_features, self.item_feature_mask = {}, {}
        for spec in specs:
            features, present = load_aligned_features(spec, tokens)
            self.item_features[spec.name] = torch.from_numpy(features)
            self.item_feature_mask[spec.name] = torch.from_numpy(present)
            missing = int((~present[1:]).sum())
            if missing:
                self.logger.warning(
                    f"modality '{spec.name}': {missing} of {len(tokens) - 1} items have no feature row "
                    "(marked missing in item_feature_mask)"
                )
        self._features_fingerprint = features_fingerprint(specs) if specs else "no-features"

    # ------------------------------------------------------------ sequences
    def data_augmentation(self):
        super().data_augmentation()
        self._add_target_positions()

    def _add_target_positions(self):
        """Record, for every augmented row, the 0-based position of its target in the user's
        full time-ordered sequence, and keep each user's full sequence (for history masking)."""
        users = self.inter_feat[self.uid_field].numpy()
        targets = self.inter_feat[self.iid_field].numpy()
        starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
        positions = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)])) + 1
        self.inter_feat.update(Interaction({TARGET_POSITION_FIELD: torch.from_numpy(positions)}))
        self.set_field_property(TARGET_POSITION_FIELD, FeatureType.TOKEN, FeatureSource.INTERACTION, 1)
        first_items = self.inter_feat[self.item_id_list_field][starts, 0].numpy()
        seq_ptr = np.zeros(self.user_num + 1, dtype=np.int64)
        lengths = np.zeros(self.user_num, dtype=np.int64)
        lengths[users[starts]] = np.diff(np.r_[starts, len(users)]) + 1
        seq_ptr[1:] = np.cumsum(lengths)
        items = np.zeros(seq_ptr[-1], dtype=np.int64)
        items[seq_ptr[users[starts]]] = first_items
        items[seq_ptr[users] + positions] = targets
        self._user_sequence_ptr, self._user_sequence_items = seq_ptr, items

    def user_sequences(self):
        """``(ptr, items)``: user ``u``'s whole time-ordered sequence (training, validation and
        test items, internal ids) is ``items[ptr[u]:ptr[u + 1]]``. Available after ``build()``."""
        if self._user_sequence_ptr is None:
            raise DatasetError("user sequences exist after build() on a leave-one-out/time-ordered dataset.")
        return self._user_sequence_ptr, self._user_sequence_items

    def history_before(self, users, positions):
        """Items each row's user interacted with before its target (the target itself excluded).

        Returns (row_index, item_index) LongTensors for masking a [len(users), item_num] score
        matrix, as RecBole's trainer expects: rows ascending, each row's items ascending and
        unique. Vectorised over the batch (one gather and one ``np.unique``); the per-row loop it
        replaces is kept as the reference in tests/test_eval_speed.py.
        """
        if self._user_sequence_ptr is None:
            raise DatasetError("history masking needs leave-one-out/time-ordered splitting of one .inter file.")
        users, positions = np.asarray(users, dtype=np.int64), np.asarray(positions, dtype=np.int64)
        starts = self._user_sequence_ptr[users]
        targets = self._user_sequence_items[starts + positions]
        rows = np.repeat(np.arange(len(users), dtype=np.int64), positions)
        offsets = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(positions) - positions, positions)
        items = self._user_sequence_items[np.repeat(starts, positions) + offsets]
        keep = items != targets[rows]
        keys = np.unique(rows[keep] * self.item_num + items[keep])  # sorted: by row, then item
        return torch.from_numpy(keys // self.item_num), torch.from_numpy(keys % self.item_num)

    # ------------------------------------------------------------ splits
    def build(self):
        datasets = super().build()
        for name, dataset in zip(("train", "valid", "test"), datasets):
            dataset.split_name = name
        if self._user_sequence_ptr is not None and len(datasets) == 3:
            # Training history of a user = everything before their first evaluation target.
            cutoff = np.diff(self._user_sequence_ptr).copy()
            for evaluation in datasets[1:]:
                if len(evaluation.inter_feat):
                    users = evaluation.inter_feat[self.uid_field].numpy()
                    positions = evaluation.inter_feat[TARGET_POSITION_FIELD].numpy()
                    np.minimum.at(cutoff, users, positions)
            datasets[0]._train_cutoff = cutoff
        return datasets

    def _require_train(self, what):
        if self.split_name != "train":
            raise DatasetError(
                f"{what} must come from the training split (got the '{self.split_name}' dataset): "
                "graphs built from it would leak evaluation interactions. Use train_data.dataset."
            )

    def train_sequences(self):
        """List over users: the user's time-ordered training items (np.int64), empty if none."""
        self._require_train("train_sequences()")
        if getattr(self, "_train_sequences", None) is None:
            cutoff = getattr(self, "_train_cutoff", None)
            if cutoff is not None:
                ptr, items = self._user_sequence_ptr, self._user_sequence_items
                self._train_sequences = [items[ptr[u]:ptr[u] + cutoff[u]].copy() for u in range(self.user_num)]
            else:
                self._train_sequences = self._sequences_from_rows()
        return self._train_sequences

    def _sequences_from_rows(self):
        """Rebuild sequences from this split's augmented rows (first row's history + targets)."""
        users = self.inter_feat[self.uid_field].numpy()
        targets = self.inter_feat[self.iid_field].numpy()
        history = self.inter_feat[self.item_id_list_field].numpy()
        sequences = [np.zeros(0, dtype=np.int64) for _ in range(self.user_num)]
        order = np.argsort(users, kind="stable")  # rows of a user stay in time order
        users, targets, history = users[order], targets[order], history[order]
        if len(users):
            starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
            ends = np.r_[starts[1:], len(users)]
            for start, end in zip(starts, ends):
                first = history[start, :1]
                sequences[users[start]] = np.concatenate([first, targets[start:end]]).astype(np.int64)
        return sequences

    def train_interaction_matrix(self):
        """CSR [user_num, item_num] with 1.0 for every (user, item) of the training split."""
        self._require_train("train_interaction_matrix()")
        sequences = self.train_sequences()
        users = np.concatenate([np.full(len(s), u) for u, s in enumerate(sequences)] or [np.zeros(0)])
        items = np.concatenate(sequences) if sequences else np.zeros(0)
        matrix = sp.csr_matrix(
            (np.ones(len(items), dtype=np.float32), (users.astype(np.int64), items.astype(np.int64))),
            shape=(self.user_num, self.item_num),
        )
        matrix.data[:] = 1.0  # repeated interactions count once
        return matrix

    @property
    def fingerprint(self):
        """Hex id of the features and (on the training split) the time-ordered training
        sequences, so a co-occurrence graph is rebuilt when only the order changes (same
        user-item pairs, other timestamps). Computed once per split object: every graph builder
        of a model keys its cache on it."""
        cached = self.__dict__.get("_fingerprint")
        if cached is not None and cached[0] == self.split_name:
            return cached[1]
        digest = hashlib.sha1(self._features_fingerprint.encode())
        digest.update(f"{self.user_num}:{self.item_num}:{self.split_name}".encode())
        if self.split_name == "train":
            sequences = self.train_sequences()
            digest.update(np.array([len(s) for s in sequences], dtype=np.int64).tobytes())
            for sequence in sequences:
                digest.update(np.ascontiguousarray(sequence, dtype=np.int64).tobytes())
        self._fingerprint = (self.split_name, digest.hexdigest())
        return self._fingerprint[1]

    @property
    def graph_cache_dir(self):
        """Folder for on-disk graph caches (see :func:`default_graph_cache_dir`)."""
        folder = self.config["graph_cache_dir"] or default_graph_cache_dir(
            self.config["mm_feature_path"], self.config["checkpoint_dir"], self.dataset_name)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise DatasetError(f"cannot create graph cache folder {folder} ({err.strerror or err}). "
                               "Fix: set graph_cache_dir to a writable folder.") from None
        return folder


# Files recbole_mm writes into a data folder it creates (prepare's and the ml-100k builder's manifests).
OWNED_FOLDER_MARKERS = ("prepare_manifest.*.json", "features_manifest.json")


def recbole_mm_wrote(folder):
    """True when ``folder`` was written by recbole_mm (holds one of its manifests)."""
    import glob

    return any(glob.glob(os.path.join(glob.escape(str(folder)), marker)) for marker in OWNED_FOLDER_MARKERS)


def default_graph_cache_dir(feature_dir, checkpoint_dir, dataset_name):
    """``<feature folder>/graph_cache`` when recbole_mm wrote the feature folder and may write there;
    else ``<checkpoint_dir>/graph_cache/<dataset>``. A folder the user laid out by hand, someone
    else's shared folder or a read-only one is never written to."""
    if feature_dir and recbole_mm_wrote(feature_dir) and writable_folder(os.path.join(feature_dir, "graph_cache")):
        return os.path.join(feature_dir, "graph_cache")
    return os.path.join(checkpoint_dir or "saved", "graph_cache", dataset_name)
