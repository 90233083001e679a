"""IDAgnosticMMSR: an ID-agnostic multimodal sequential recommender.

Li et al. 2023, "An Empirical Study of Training ID-Agnostic Multi-modal Sequential
Recommenders" (MMSR; official code MMSR23/MMSR). There is **no item-ID embedding**: an item
is its text and image, so cold items are scored and the weights transfer across datasets.
Equation-to-code map, defaults that differ from the official code and the switches of every
paper table: ``docs/models/IDAgnosticMMSR.md``.

* Item encoding (§3.1-3.2, ``item_source``): ``raw`` runs the encoders on the raw item text and
  images: text tokens ``T = W_t TE(text)`` (per-token linear, no pooling), image tokens
  ``V = W_v VE(image)``; only the top ``n_finetune_blocks_*`` blocks of each encoder are trained
  (App. F), everything below is frozen and its outputs are cached. ``features`` is the frozen
  encoder setting: one precomputed vector per item and modality (the dataset's ``*_feat.npy``),
  then the same per-modality projection ``W_m``.
* Fusion (§3.3, ``fusion``): ``e_i = Fuse(T, V)``; one modality (``modalities: [text]`` =
  MMSR-T, ``[image]`` = MMSR-V) is the masked mean of its projected tokens.
* Backbone (§3.5, ``backbone``): ``h_t = Seq(e_1..e_t)``; score ``s(i) = <h_t, e_i>``.
* Objective (§4.4, Eq. 6, ``loss_type``): dense next-item prediction at every valid position;
  ``BCE`` = the paper's one uniform negative per position (not in the user's row),
  ``L = mean BCE(s+, 1) + mean BCE(s-, 0)``; ``CE`` = softmax cross-entropy over all items.

Cold start: ``encode_raw(texts, images)`` (or ``features=`` in feature mode) and ``predict_raw``
score items given only their content. Transfer: no parameter shape depends on the item count;
``pretrained_checkpoint`` loads a checkpoint trained on another dataset before fine-tuning.
"""

import logging

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_mm.checks import select_modalities
from recbole_mm.data.raw_items import (HashWordTokenizer, ImageStore, load_item_image_paths,
                                       load_item_texts, raw_modalities, tokenize_texts)
from recbole_mm.distributed import mean_denominator
from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.backbones import build_backbone
from recbole_mm.model.layers.encoder_blocks import load_hf_encoder
from recbole_mm.model.layers.encoders import TextTower, TokenProjection, VisionTower
from recbole_mm.model.layers.fusion import TOKEN_FUSIONS, build_fusion, masked_mean
from recbole_mm.trainer import MMTrainer, load_checkpoint

logger = logging.getLogger(__name__)
ITEM_SOURCES = ("auto", "raw", "features")
RAW_MODALITIES = ("text", "image")  # raw item content the encoders read
LOSS_TYPES = ("BCE", "CE")
# Fusions that need several tokens per modality: with one vector per modality (item_source:
# features) co-attention's cross-attention has a single key, so its weights are constant 1.
FEATURE_MODE_REJECTS = ("co_attn",)


def _vision_out_dim(model):
    cfg = model.config
    if getattr(model, "num_features", None):  # Swin: last stage width
        return int(model.num_features)
    if getattr(cfg, "hidden_sizes", None):  # ResNet / ConvNeXt
        return int(cfg.hidden_sizes[-1])
    return int(cfg.hidden_size)


def _fusion_order(modalities):
    """Fusion inputs in the paper's roles: text is ``x``, image is ``y``; other names keep their
    order after those."""
    rank = {"text": 0, "image": 1}
    return sorted(modalities, key=lambda m: rank.get(m, 2))


def resolve_item_source(config, dataset):
    """``(item_source, modalities)`` from the config keys ``item_source`` and ``modalities``.

    ``auto`` reads raw content when the dataset has it for every requested modality (for
    ``modalities: ~``, when it has any raw item text or images), else the feature files.
    """
    source = config["item_source"] or "auto"
    if source not in ITEM_SOURCES:
        raise ConfigError(f"config key 'item_source' must be one of {list(ITEM_SOURCES)}, got {source!r}.")
    requested = config["modalities"]
    requested = [requested] if isinstance(requested, str) else requested
    raw = raw_modalities(config)
    if source == "auto":
        covered = bool(raw) if requested is None else all(m in raw for m in requested)
        source = "raw" if covered else "features"
        if source == "features" and not dataset.modalities:
            wanted = requested or list(RAW_MODALITIES)
            raise ConfigError(
                f"IDAgnosticMMSR: the dataset has neither raw content nor feature files for modalities {wanted}. "
                "Fix: set item_text_file / item_image_dir (raw text, images), or declare multimodal_features "
                f"(*_feat.npy) in the dataset yaml, or choose modalities from the raw content {raw}.")
    if source == "raw":
        if requested is None and not raw:
            raise ConfigError("IDAgnosticMMSR with item_source: raw needs raw item text or images, and the dataset "
                              "has neither. Fix: set item_text_file (or put <dataset>.text next to the .inter file) "
                              "or item_image_dir in the dataset yaml, or use item_source: features.")
        modalities = list(requested) if requested is not None else [m for m in RAW_MODALITIES if m in raw]
        unknown = [m for m in modalities if m not in RAW_MODALITIES]
        if unknown or not modalities:
            raise ConfigError(f"IDAgnosticMMSR with item_source: raw reads text and images only; modalities "
                              f"{modalities} is not a non-empty subset of {list(RAW_MODALITIES)}. Fix: set "
                              "modalities: [text], [image] or [text, image], or item_source: features.")
        return source, _fusion_order(modalities)
    modalities = _fusion_order(select_modalities(config, dataset.modalities, "IDAgnosticMMSR (item_source: features)"))
    if len(modalities) > 2:
        raise ConfigError(f"IDAgnosticMMSR fuses at most two modalities, the dataset has {modalities}. "
                          "Fix: set modalities to one or two of them, e.g. modalities: [text, image].")
    return source, modalities


class IDAgnosticMMSR(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.item_source, self.modalities = resolve_item_source(config, dataset)
        fusion = config["fusion"]
        fused = len(self.modalities) == 2
        if fused and self.item_source == "features" and fusion in FEATURE_MODE_REJECTS:
            raise ConfigError(
                f"config key 'fusion' = {fusion} needs token sequences, but item_source: features gives one "
                "vector per modality (its cross-attention would attend to a single key). Fix: set fusion to "
                "merge_attn or a coarse fusion (sum, concat, film, gate, *_dnn), or use item_source: raw.")
        self.loss_type = config["loss_type"] or "BCE"
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"config key 'loss_type' must be BCE or CE for IDAgnosticMMSR, got {self.loss_type!r}.")
        d = self.d = config["embedding_size"]
        self.item_encode_batch = config["item_encode_batch"]
        self.encoder_lr, self.learning_rate = config["encoder_lr"], config["learning_rate"]
        self.weight_decay = config["weight_decay"]
        self.text_max_len, self.text_lowercase = config["text_max_len"], config["text_lowercase"]
        self.token_fusion = fused and fusion in TOKEN_FUSIONS
        self.text_tower = self.vision_tower = self.fusion = None
        self.feature_proj = None
        if self.item_source == "raw":
            self._build_towers(config, dataset, d)
        else:
            self.feature_proj = nn.ModuleDict()
            for m in self.modalities:
                features = dataset.item_features[m].float()
                self.register_buffer(f"features_{m}", features, persistent=False)
                self.register_buffer(f"feature_mask_{m}", dataset.item_feature_mask[m].bool(), persistent=False)
                self.feature_proj[m] = TokenProjection(features.shape[1], d)
        if fused:
            self.fusion = build_fusion(fusion, d, config["fusion_layers"], config["fusion_heads"],
                                       config["hidden_dropout_prob"], config["merge_type_emb"],
                                       config["dnn_final_act"])
        self.backbone = build_backbone(config, d)
        self._pool_first = not self.token_fusion
        self.dense_train_last_only = config["dense_train_last_only"]
        if self.dense_train_last_only:
            self._index_last_windows(dataset)
        self._table = None
        if config["pretrained_checkpoint"]:
            self.load_pretrained(config["pretrained_checkpoint"])

    def _build_towers(self, config, dataset, d):
        """Text / vision encoders over the raw item content (``item_source: raw``)."""
        tower_args = dict(cache_frozen=config["cache_frozen"], cache_device=config["cache_device"],
                          cache_dtype=config["cache_dtype"])
        if "text" in self.modalities:
            texts = load_item_texts(config, dataset)  # before the encoder: a missing file fails fast
            model, local_dir = load_hf_encoder(config["text_encoder_path"], config["text_encoder_config"],
                                               config["allow_random_init"], "text_encoder_path")
            self.tokenizer = self._tokenizer(model, local_dir)
            ids, mask = tokenize_texts(texts, self.tokenizer, self.text_max_len, self.text_lowercase)
            self.text_tower = TextTower(model, ids, mask, n_finetune=config["n_finetune_blocks_text"],
                                        block_path=config["text_block_path"], **tower_args)
            self.text_proj = TokenProjection(model.config.hidden_size, d)
        if "image" in self.modalities:
            image_paths = load_item_image_paths(config, dataset)
            model, local_dir = load_hf_encoder(config["vision_encoder_path"], config["vision_encoder_config"],
                                               config["allow_random_init"], "vision_encoder_path")
            size = getattr(model.config, "image_size", None) or config["image_size"]
            size = size[0] if isinstance(size, (list, tuple)) else size
            store = ImageStore(image_paths, size, cache_dir=config["image_cache_dir"])
            # a CNN gives a grid: token-level fusions read it as tokens (Conv3x3 + ReLU, paper
            # footnote 7); everything else uses its pooled vector through a Linear layer
            grid = self.token_fusion and type(model).__name__.startswith(("ResNet", "ConvNext", "RegNet"))
            self.vision_tower = VisionTower(
                model, store, config["image_norm"], local_dir, config["mae_mask_ratio"],
                config["mae_eval_mask"], n_finetune=config["n_finetune_blocks_vision"],
                block_path=config["vision_block_path"], keep_grid=grid, **tower_args)
            self.vision_proj = TokenProjection(_vision_out_dim(model), d, grid=grid)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _tokenizer(model, local_dir):
        if local_dir is None:
            return HashWordTokenizer(model.config.vocab_size)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(local_dir, local_files_only=True)

    def _index_last_windows(self, dataset):
        """Per user, the training row with the longest (latest) prefix: the paper trains on one
        window per user with dense targets, so shorter prefixes only repeat its positions."""
        feat = dataset.inter_feat
        users = feat[self.USER_ID].long()
        lengths = feat[self.ITEM_SEQ_LEN].long()
        n = len(users)
        key = lengths * n + torch.arange(n)  # longest prefix, then latest row
        n_users = int(users.max()) + 1 if n else 1
        best = torch.full((n_users,), -1, dtype=torch.long).scatter_reduce(0, users, key, "amax")
        last_row = torch.where(best >= 0, best % max(n, 1), torch.full_like(best, -1))
        self._last_row_of_user = last_row
        self._last_seq = feat[self.ITEM_SEQ][last_row.clamp(min=0)].long()
        self._last_target = feat[self.ITEM_ID][last_row.clamp(min=0)].long()
        self._last_target[last_row < 0] = -1

    def load_pretrained(self, path):
        """Transfer: load a checkpoint of this model trained on another dataset (strict)."""
        state = load_checkpoint(path, map_location="cpu")
        self.load_state_dict(state.get("state_dict", state), strict=True)
        logger.info("IDAgnosticMMSR: loaded pretrained weights from %s", path)

    # ------------------------------------------------------------------ items
    def _fuse(self, parts):
        """Item vectors ``[n, d]`` from ``[(tokens, mask)]``, one pair per modality (fusion order)."""
        if len(parts) == 1:
            return masked_mean(*parts[0])
        (text, text_mask), (image, image_mask) = parts
        return self.fusion(text, text_mask, image, image_mask)

    def _project(self, proj, tokens, mask):
        """Per-token projection. When only the token mean is used (MMSR-T/-V, coarse fusions)
        and ``proj`` is linear, mean first: ``mean(W t + b) = W mean(t) + b`` (exact, and
        ``text_max_len`` times cheaper). Items with no valid token keep an all-False mask."""
        if self._pool_first and not proj.grid:
            return proj(masked_mean(tokens, mask)).unsqueeze(1), mask.any(1, keepdim=True)
        return proj(tokens), mask

    def _feature_tokens(self, modality, vectors, present):
        """One projected token per item from a frozen feature vector (``item_source: features``)."""
        return self.feature_proj[modality](vectors).unsqueeze(1), present.unsqueeze(1)

    def _encode_stored(self, item_ids):
        """Vectors ``[n, d]`` of stored items ``item_ids`` (all non-pad)."""
        if self.item_source == "features":
            return self._fuse([self._feature_tokens(m, getattr(self, f"features_{m}")[item_ids],
                                                    getattr(self, f"feature_mask_{m}")[item_ids])
                               for m in self.modalities])
        parts = []
        if self.text_tower is not None:
            parts.append(self._project(self.text_proj, *self.text_tower(item_ids)))
        if self.vision_tower is not None:
            parts.append(self._project(self.vision_proj, *self.vision_tower(item_ids)))
        return self._fuse(parts)

    def encode_items(self, item_ids):
        """Vectors ``[n, d]`` for internal ids; pad (0) gives a zero vector. Chunked."""
        out = torch.zeros(len(item_ids), self.d, device=item_ids.device)
        real = (item_ids > 0).nonzero().squeeze(1)
        for start in range(0, len(real), self.item_encode_batch):
            rows = real[start : start + self.item_encode_batch]
            out[rows] = self._encode_stored(item_ids[rows]).to(out.dtype)
        return out

    @torch.no_grad()
    def encode_raw(self, texts=None, images=None, features=None):
        """Vectors ``[n, d]`` for items outside the dataset (cold start). ``item_source: raw``:
        ``texts`` is a list of strings, ``images`` a uint8/float tensor ``[n,3,S,S]`` (S = the
        encoder's image size). ``item_source: features``: ``features`` maps each modality to its
        frozen vectors ``[n, dim]`` (an all-zero row marks the modality missing)."""
        if self.item_source == "features":
            missing = [m for m in self.modalities if features is None or m not in features]
            if missing:
                raise ConfigError(f"encode_raw needs features={{modality: tensor}} for {missing} "
                                  "(item_source: features). Fix: pass one tensor per modality.")
            vectors = {m: torch.as_tensor(features[m], dtype=torch.float32, device=self.device)
                       for m in self.modalities}
            return self._fuse([self._feature_tokens(m, v, v.ne(0).any(1)) for m, v in vectors.items()])
        parts = []
        if self.text_tower is not None:
            ids, mask = tokenize_texts(list(texts), self.tokenizer, self.text_max_len, self.text_lowercase)
            tokens, text_mask = self.text_tower.encode_tokens(ids.to(self.device), mask.to(self.device))
            parts.append(self._project(self.text_proj, tokens, text_mask))
        if self.vision_tower is not None:
            store = ImageStore(images=torch.cat([torch.zeros_like(images[:1]), images]).cpu())
            ids = torch.arange(1, store.n_items, device=self.device)
            tokens, image_mask = self.vision_tower.run(
                self.vision_tower.pixel_inputs(store.pixels(ids).to(self.device), ids))
            image_mask = image_mask & store.has_image[ids.cpu()].to(self.device).unsqueeze(1)
            parts.append(self._project(self.vision_proj, tokens, image_mask))
        return self._fuse(parts)

    def item_table(self):
        """All item vectors ``[n_items, d]`` (row 0 zero), computed once per evaluation in chunks
        of ``item_encode_batch``; cached until training resumes or the weights change."""
        if self._table is not None and not self.training:
            return self._table
        with torch.no_grad():
            table = self.encode_items(torch.arange(self.n_items, device=self.device))
        if not self.training:
            self._table = table
        return table

    def invalidate_item_table(self):
        self._table = None

    # trainer hooks ------------------------------------------------------
    def on_train_step_end(self):
        self.invalidate_item_table()

    def train(self, mode=True):
        if mode:
            self.invalidate_item_table()
        return super().train(mode)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Also drops the item table, and a tower's frozen cache if its frozen weights change."""
        self.invalidate_item_table()
        for prefix, tower in (("text_tower.", self.text_tower), ("vision_tower.", self.vision_tower)):
            if tower is None:
                continue
            frozen = [(prefix + n, p) for n, p in tower.named_parameters() if not p.requires_grad]
            if any(k in state_dict and not torch.equal(state_dict[k].to(p.device), p) for k, p in frozen):
                tower.clear_cache()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def optimizer_param_groups(self):
        """AdamW groups: each encoder (``encoder_lr``, no weight decay) and the rest
        (``learning_rate``, ``weight_decay``). Frozen parameters are left out."""
        groups, in_towers = [], set()
        for name, tower in (("text_encoder", self.text_tower), ("vision_encoder", self.vision_tower)):
            if tower is None:
                continue
            params = [p for p in tower.parameters() if p.requires_grad]
            in_towers.update(id(p) for p in tower.parameters())
            if params:
                groups.append({"params": params, "lr": self.encoder_lr,
                               "weight_decay": 0.0, "name": name})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in in_towers]
        groups.append({"params": rest, "lr": self.learning_rate,
                       "weight_decay": self.weight_decay, "name": "rest"})
        return groups

    # ------------------------------------------------------------------ sequences
    def _sequence_states(self, seq, seq_emb):
        return self.backbone(seq_emb, seq)

    def _keep_last_windows(self, interaction):
        users = interaction[self.USER_ID].long().cpu()
        known = users < len(self._last_row_of_user)
        keep = torch.zeros(len(users), dtype=torch.bool)
        u = users[known]
        seq = interaction[self.ITEM_SEQ].cpu()[known]
        target = interaction[self.ITEM_ID].cpu()[known]
        keep[known] = (target == self._last_target[u]) & (seq == self._last_seq[u]).all(1)
        return keep.to(self.device)

    def sample_negatives(self, seq, target, valid):
        """One uniform negative per position, resampled (<= 10 tries) if in the user's row."""
        row_items = torch.cat([seq, target.unsqueeze(1)], dim=1)
        neg = torch.randint(1, self.n_items, seq.shape, device=seq.device)
        for _ in range(10):
            bad = (neg.unsqueeze(-1) == row_items.unsqueeze(1)).any(-1) & valid
            if not bad.any():
                break
            neg[bad] = torch.randint(1, self.n_items, (int(bad.sum()),), device=seq.device)
        return neg

    def calculate_loss(self, interaction):
        """Mean loss over every valid position of the batch. Under DDP the ranks hold unequal
        numbers of positions, so each divides its sum by the mean count per rank
        (:func:`recbole_mm.distributed.mean_denominator`): the averaged gradient is that of
        the whole batch's mean, as in one process."""
        self.invalidate_item_table()
        seq, seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.ITEM_ID]
        if self.dense_train_last_only:
            keep = self._keep_last_windows(interaction)
            seq, seq_len, target = seq[keep], seq_len[keep], target[keep]
        denominator = mean_denominator(int(seq_len.sum()), self.device)  # valid positions
        if not len(seq_len) or denominator == 0:  # no parameter gets a gradient: the step is a no-op
            return torch.zeros((), device=self.device, requires_grad=True)
        seq = seq[:, : int(seq_len.max())]  # trailing pads never change causal states
        batch, length = seq.shape
        rows = torch.arange(batch, device=seq.device)
        next_items = torch.cat([seq[:, 1:], torch.zeros_like(seq[:, :1])], dim=1)
        next_items[rows, seq_len - 1] = target
        valid = torch.arange(length, device=seq.device).unsqueeze(0) < seq_len.unsqueeze(1)
        if self.loss_type == "CE":
            return self._cross_entropy_loss(seq, valid, next_items) / denominator
        neg = self.sample_negatives(seq, target, valid)
        n = int(valid.sum())
        ids = torch.cat([seq[valid], next_items[valid], neg[valid]])
        unique, inverse = torch.unique(ids, return_inverse=True)
        vectors = self.encode_items(unique)  # every distinct item of the batch encoded once
        seq_emb = torch.zeros(batch, length, self.d, device=seq.device, dtype=vectors.dtype)
        seq_emb[valid] = vectors[inverse[:n]]
        states = self._sequence_states(seq, seq_emb)[valid]
        pos_score = (states * vectors[inverse[n : 2 * n]]).sum(-1)
        neg_score = (states * vectors[inverse[2 * n :]]).sum(-1)
        return (F.binary_cross_entropy_with_logits(pos_score, torch.ones_like(pos_score), reduction="sum")
                + F.binary_cross_entropy_with_logits(neg_score, torch.zeros_like(neg_score), reduction="sum")
                ) / denominator

    def _cross_entropy_loss(self, seq, valid, next_items):
        """``loss_type: CE``: softmax over every item (PAD excluded) at each valid position, as
        SASRec's CE, summed; the whole catalogue is encoded with gradients every step."""
        table = self.encode_items(torch.arange(self.n_items, device=seq.device))
        states = self._sequence_states(seq, table[seq])[valid]
        logits = states @ table.t()
        logits[:, 0] = float("-inf")
        return F.cross_entropy(logits, next_items[valid], reduction="sum")

    def user_states(self, interaction, table=None):
        """Hidden state at each row's last position, ``[B, d]``."""
        table = self.item_table() if table is None else table
        seq, seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        seq = seq[:, : int(seq_len.max())]  # trailing pads never change causal states
        states = self._sequence_states(seq, table[seq])
        return self.gather_indexes(states, seq_len - 1)

    def predict(self, interaction):
        table = self.item_table()
        return (self.user_states(interaction, table) * table[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction):
        table = self.item_table()
        return self.user_states(interaction, table) @ table.t()

    def predict_raw(self, interaction, texts=None, images=None, features=None):
        """Scores ``[B, n]`` of items given only by their content (never seen, no ID); arguments
        as :meth:`encode_raw`."""
        return self.user_states(interaction) @ self.encode_raw(texts, images, features).t()


class IDAgnosticMMSRTrainer(MMTrainer):
    """MMTrainer plus the paper's step decay: every group's lr is multiplied by
    ``lr_step_gamma`` from epoch ``lr_step_epoch`` on (``~`` disables it)."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        step, gamma = self.config["lr_step_epoch"], self.config["lr_step_gamma"]
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            decayed = step is not None and epoch_idx >= step
            group["lr"] = group["base_lr"] * (gamma if decayed else 1.0)
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
