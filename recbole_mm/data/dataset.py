"""MultimodalSequentialDataset: RecBole's SequentialDataset plus per-item modality features.

After RecBole has loaded, filtered and remapped the data (``super().__init__``), every declared
feature file is loaded and aligned to RecBole's internal item ids through
``field2id_token[item_id]`` (row 0 = padding), with a presence mask per modality. The training
split exposes its user-item interactions and time-ordered sequences for the graph builders,
so no graph ever sees validation or test interactions. See ``docs/architecture.md``.
"""
import hashlib
import os

import numpy as np
import scipy.sparse as sp
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_mm.data.features import features_fingerprint, load_aligned_features, parse_feature_specs

TARGET_POSITION_FIELD = "mm_target_position"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


class DatasetError(ValueError):
    """The dataset cannot be used as configured; the message names the cause and the fix."""


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
        specs = parse_feature_specs(config["multimodal_features"], feature_dir, config["mm_modalities"])
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
        matrix, as RecBole's trainer expects.
        """
        if self._user_sequence_ptr is None:
            raise DatasetError("history masking needs leave-one-out/time-ordered splitting of one .inter file.")
        rows, cols = [], []
        for r, (u, p) in enumerate(zip(users.tolist(), positions.tolist())):
            start = self._user_sequence_ptr[u]
            history = self._user_sequence_items[start:start + p]
            target = self._user_sequence_items[start + p]
            history = np.unique(history[history != target])
            rows.append(np.full(len(history), r))
            cols.append(history)
        return torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))

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
        """Hex id of the features and (on the training split) the training interactions.
        Computed once per split object: every graph builder of a model keys its cache on it."""
        cached = self.__dict__.get("_fingerprint")
        if cached is not None and cached[0] == self.split_name:
            return cached[1]
        digest = hashlib.sha1(self._features_fingerprint.encode())
        digest.update(f"{self.user_num}:{self.item_num}:{self.split_name}".encode())
        if self.split_name == "train":
            matrix = self.train_interaction_matrix()
            digest.update(matrix.indptr.tobytes())
            digest.update(matrix.indices.tobytes())
        self._fingerprint = (self.split_name, digest.hexdigest())
        return self._fingerprint[1]

    @property
    def graph_cache_dir(self):
        """Folder for on-disk graph caches: ``graph_cache_dir`` if set; else
        ``<feature folder>/graph_cache`` when that folder is ours (under the working directory or
        the repository, e.g. ``dataset/ml-100k``); else ``<checkpoint_dir>/graph_cache/<dataset>``,
        so shared or read-only data folders are never written to."""
        configured = self.config["graph_cache_dir"]
        if configured:
            folder = configured
        else:
            feature_dir = os.path.realpath(self.config["mm_feature_path"])
            ours = [os.path.realpath(os.getcwd()), REPO_ROOT]
            if any(feature_dir == root or feature_dir.startswith(root + os.sep) for root in ours):
                folder = os.path.join(feature_dir, "graph_cache")
            else:
                folder = os.path.join(self.config["checkpoint_dir"] or "saved", "graph_cache", self.dataset_name)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise DatasetError(f"cannot create graph cache folder {folder} ({err}). Fix: set graph_cache_dir.") from None
        return folder
