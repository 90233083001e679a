"""MuSTRec: Multimodal and Sequential Transformer-based Recommendation.

Paper: Sahyouni, Chen, Vowels, Hadfield, "Multimodal Enhancement of Sequential Recommendation".
Equation-to-code map, official-code differences (D1-D13) and the switches of the paper's tables:
``docs/models/MuSTRec.md``. Equations implemented:

- Eq 1-3   frozen item-item graph ``S = sum_m alpha_m D^-1/2 kNN_k(X^m) D^-1/2`` (cosine, top-k
           incl. self, directed), built once from the raw features (``recbole_mm.graphs``).
- Eq 4-9   LightGCN over the degree-pruned user-item graph (pruned anew every training epoch,
           full graph at evaluation): ``h_hat = mean_{l=0..L_ui} A^l [E_u; E_i]``,
           ``h_tilde = S^{L_ii} E_i``, ``h_u = h_hat_u``, ``h_i = h_hat_i + h_tilde_i``.
- Eq 10-16 frequency-attention (BSARec) head over ``[h_{s_1} .. h_{s_n}]`` (left padded, learned
           positions; ``user_token`` prepends ``h_u``: MuSTRec-U).
- Eq 17    scores ``y_i = h_i^T x`` (a dot product) with ``x`` the last position's output.
- Eq 18-20 ``L = w_bpr * [BPR(h) + lambda * sum_m BPR(W_m x^m + b_m)] + omega * CE``.

Variants (switches, or the ``variant`` shorthand expanded by :func:`resolve_switches`):
-B (BSARec: no graphs, CE only), -M (no user-item graph), -I (no item-item graph, no features),
-V / -T (visual / text graph only), -U (user token), -S (two-stage, :class:`MuSTRecTrainer`).
``seq_item_source: id`` reproduces the official head input (raw ID table; D1).
"""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_mm.checks import select_modalities
from recbole_mm.data.dataset import TARGET_POSITION_FIELD
from recbole_mm.data.leakage import (check_eval_histories, check_training_graph, history_entries, history_keys,
                                     is_member)
from recbole_mm.errors import ConfigError
from recbole_mm.graphs.interaction import DegreePruner, user_item_adjacency
from recbole_mm.graphs.knn import knn_graph
from recbole_mm.graphs.normalize import sym_normalize, weighted_sum
from recbole_mm.model.layers.dropout import MaskDropout
from recbole_mm.model.layers.eval_chunks import score_in_chunks
from recbole_mm.model.layers.feature_table import FeatureTable, check_tables_fit
from recbole_mm.model.layers.frequency_attention import (
    FrequencyAttentionEncoder, attention_mask, right_to_left_padding)
from recbole_mm.model.layers.initialization import init_sasrec_weights
from recbole_mm.model.layers.lightgcn import lightgcn_propagate
from recbole_mm.model.layers.sparse_matmul import graph_matmul
from recbole_mm.utils import atomic_write, keyed_randint

try:  # the foundation's trainer (hooks, safe loading); plain RecBole before it exists
    from recbole_mm.trainer import MMTrainer
except ImportError:  # pragma: no cover
    from recbole.trainer import Trainer as MMTrainer

GRAPH_CODE_VERSION = 1

# Full-model values of the switches the variants set.
FULL_MODEL = {"use_item_graph": True, "use_ui_graph": True, "w_bpr": 1.0, "reg_weight": 0.001,
              "image_weight": 0.1, "user_token": False, "pretrain_graph": False}
VARIANTS = {
    "full": {},
    "B": {"use_item_graph": False, "use_ui_graph": False, "w_bpr": 0.0},
    "M": {"use_ui_graph": False},
    "I": {"use_item_graph": False, "reg_weight": 0.0},
    "V": {"image_weight": 1.0},
    "T": {"image_weight": 0.0},
    "U": {"user_token": True},
    "S": {"pretrain_graph": True},
}


def _get(config, key, default=None):
    try:
        value = config[key]
    except KeyError:
        return default
    return default if value is None else value


def resolve_switches(config):
    """Expand ``variant`` (``full``, ``B``, ``M``, ``I``, ``V``, ``T``, ``U``, ``S`` or a
    ``+``-joined combination such as ``S+U``) into explicit switches; the only place variants
    are interpreted. A switch set explicitly to a third value conflicts and raises."""
    raw = _get(config, "variant", "full")
    names = raw if isinstance(raw, (list, tuple)) else str(raw).replace(",", "+").split("+")
    names = [n.strip().lstrip("-").upper() if n.strip().lower() != "full" else "full"
             for n in names if n.strip()]
    switches = {key: _get(config, key, value) for key, value in FULL_MODEL.items()}
    for name in names:
        if name not in VARIANTS:
            raise ConfigError(f"MuSTRec: unknown variant {name!r} in `variant: {raw}`; "
                              f"use one of {sorted(VARIANTS)} or a '+'-joined combination")
        for key, value in VARIANTS[name].items():
            current = switches[key]
            if current != FULL_MODEL[key] and current != value:
                raise ConfigError(f"MuSTRec: `variant: {raw}` sets {key}={value} but the config sets "
                                  f"{key}={current}; remove one of them")
            switches[key] = value
    return switches


def modality_weights(modalities, image_weight, explicit=None):
    """Weights alpha_m of the per-modality kNN graphs.

    ``explicit`` (``modality_weights`` key) wins. Otherwise ``image`` gets ``image_weight`` and
    the other modalities share ``1 - image_weight`` equally; without an image modality all
    share equally; a single modality gets 1 (the official rule for a missing modality).
    """
    if explicit:
        unknown = set(explicit) - set(modalities)
        if unknown:
            raise ConfigError(f"MuSTRec: modality_weights names {sorted(unknown)}, "
                              f"but the dataset has modalities {modalities}")
        return {m: float(explicit.get(m, 0.0)) for m in modalities}
    if len(modalities) == 1:
        return {modalities[0]: 1.0}
    if "image" in modalities:
        rest = [m for m in modalities if m != "image"]
        return {m: (float(image_weight) if m == "image" else (1.0 - image_weight) / len(rest))
                for m in modalities}
    return {m: 1.0 / len(modalities) for m in modalities}


def bpr_loss(user, positive, negative):
    """Mean over the batch of ``-log sigmoid(u.p - u.n)``."""
    return -F.logsigmoid((user * positive).sum(-1) - (user * negative).sum(-1)).mean()


class MuSTRec(SequentialRecommender):
    """Graph backbone (FREEDOM-style) feeding a frequency-attention sequential head."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        sw = resolve_switches(config)
        self.use_item_graph, self.use_ui_graph = bool(sw["use_item_graph"]), bool(sw["use_ui_graph"])
        self.w_bpr, self.reg_weight = float(sw["w_bpr"]), float(sw["reg_weight"])
        self.user_token, self.pretrain_graph = bool(sw["user_token"]), bool(sw["pretrain_graph"])
        self.image_weight = float(sw["image_weight"])
        self.omega = float(config["omega"])
        self.seq_item_source = config["seq_item_source"]
        if self.seq_item_source not in ("graph", "id"):
            raise ConfigError(f"MuSTRec: seq_item_source must be 'graph' or 'id', got {self.seq_item_source!r}")
        self.embedding_size = int(config["embedding_size"])  # d of the graph part and of the head
        self.n_users = dataset.user_num
        self.n_ui_layers, self.n_ii_layers = int(config["n_ui_layers"]), int(config["n_ii_layers"])
        self.ui_layer_combine = _get(config, "ui_layer_combine", "mean")
        self.freeze_pretrained = bool(_get(config, "freeze_pretrained", True))
        self.seed = int(_get(config, "seed", 0))
        self.stage = "joint"  # 'graph' / 'head': the two stages of MuSTRec-S

        # --- ID tables (Xavier as in the paper, or N(0, std) as the official code ends up with)
        self.user_embedding = nn.Embedding(self.n_users, self.embedding_size, padding_idx=0)
        self.item_embedding = nn.Embedding(self.n_items, self.embedding_size, padding_idx=0)
        for table in (self.user_embedding, self.item_embedding):
            if config["item_init"] == "xavier":
                nn.init.xavier_uniform_(table.weight)
            elif config["item_init"] == "normal":
                nn.init.normal_(table.weight, 0.0, config["initializer_range"])
            else:
                raise ConfigError(f"MuSTRec: item_init must be 'xavier' or 'normal', got {config['item_init']!r}")
            with torch.no_grad():
                table.weight[0].zero_()

        # --- raw modality features (the kNN graph reads them once; tables + W_m serve the modal BPR)
        self.modal_bpr = self.w_bpr > 0 and self.reg_weight > 0
        need_features = self.use_item_graph or self.modal_bpr
        if need_features and not dataset.modalities:
            raise ConfigError("MuSTRec: the dataset has no modality features; set `multimodal_features` "
                              "in the dataset yaml, or run `variant: B` (no graphs, no features)")
        self.modalities = select_modalities(config, dataset.modalities, "MuSTRec") if need_features else []
        self.feature_tables, self.modal_projections = nn.ModuleDict(), nn.ModuleDict()
        if self.modal_bpr:  # fail here, not in the first step, when the tables cannot fit
            check_tables_fit([tuple(dataset.item_features[name].shape) for name in self.modalities],
                             bool(config["train_raw_features"]), config["device"], "MuSTRec")
        for name in self.modalities if self.modal_bpr else []:
            feats = dataset.item_features[name].float()
            self.feature_tables[name] = FeatureTable(feats, trainable=config["train_raw_features"])
            self.modal_projections[name] = nn.Linear(feats.shape[1], self.embedding_size)

        # --- graphs (training interactions only)
        inter = dataset.train_interaction_matrix().tocsr()
        if config["leakage_check"]:
            check_training_graph(inter, dataset)
        self.register_buffer("history_keys", history_keys(inter, self.n_items), persistent=False)
        self.register_buffer("item_item_graph", None, persistent=False)
        self.register_buffer("ui_graph_full", None, persistent=False)
        self._ui_graph_epoch, self.pruner = None, None
        if self.use_item_graph:
            self.item_item_graph = self._build_item_graph(config, dataset)
        if self.use_ui_graph:
            self.ui_graph_full = user_item_adjacency(inter)
            keep = float(config["ui_keep_ratio"])
            self.pruner = DegreePruner(inter, keep, seed=self.seed) if keep < 1.0 else None
        self._epoch = 0  # keys the BPR negatives (on_epoch_start)

        # --- head (Eqs 10-16)
        positions = self.max_seq_length + (1 if self.user_token else 0)
        self.position_embedding = nn.Embedding(positions, self.embedding_size)
        self.input_layer_norm = nn.LayerNorm(self.embedding_size, eps=config["layer_norm_eps"])
        self.input_dropout = MaskDropout(config["hidden_dropout_prob"])
        self.encoder = FrequencyAttentionEncoder(
            n_layers=config["n_layers"], hidden_size=self.embedding_size, n_heads=config["n_heads"],
            inner_size=config["inner_size"], hidden_dropout=config["hidden_dropout_prob"],
            attn_dropout=config["attn_dropout_prob"], hidden_act=config["hidden_act"],
            layer_norm_eps=config["layer_norm_eps"], c=config["bsa_c"], alpha=config["bsa_alpha"])
        std = config["initializer_range"]
        for module in (self.position_embedding, self.input_layer_norm, self.encoder):
            module.apply(lambda m: init_sasrec_weights(m, std))  # sqrt_beta keeps its N(0, 1) draw
        # MuSTRec-S stage 2 tables h_u, h_i: buffers (or trainable copies), so checkpoints keep them
        self.register_buffer("frozen_user", None)
        self.register_buffer("frozen_item", None)
        self._eval_cache = None

    # ------------------------------------------------------------------ graphs
    def _build_item_graph(self, config, dataset):
        weights = modality_weights(self.modalities, self.image_weight, _get(config, "modality_weights"))
        if "image" not in self.modalities and self.image_weight != FULL_MODEL["image_weight"] \
                and not _get(config, "modality_weights"):
            raise ConfigError(f"MuSTRec: image_weight={self.image_weight} (variant V/T) needs an 'image' "
                              f"modality; the dataset has {self.modalities}. Use `modality_weights` instead")
        k = int(config["knn_k"])
        backend, approx_dim = _get(config, "knn_backend", "torch"), _get(config, "knn_approx_dim")
        extra = {} if backend == "torch" else {"backend": backend, "seed": self.seed}
        if approx_dim and backend == "torch":
            extra = {"approx_dim": int(approx_dim), "seed": self.seed}

        def build():
            graphs, alphas = [], []
            for name, alpha in weights.items():
                if alpha == 0:
                    continue
                knn = knn_graph(dataset.item_features[name].float(), k, include_self=True,
                                valid_mask=dataset.item_feature_mask[name],
                                invalid_rows="self_loop", pad_index=0, **extra)
                graphs.append(sym_normalize(knn))
                alphas.append(alpha)
            return weighted_sum(graphs, alphas)

        key = {"model": "MuSTRec", "fingerprint": getattr(dataset, "fingerprint", None), "k": k,
               "weights": weights, "version": GRAPH_CODE_VERSION, **extra}  # torch: the keys of existing caches
        try:
            from recbole_mm.graphs.cache import cached_tensor
        except ImportError:  # pragma: no cover - cache module not available
            return build()
        cache_dir = getattr(dataset, "graph_cache_dir", None)
        if cache_dir is None or key["fingerprint"] is None:
            return build()
        return cached_tensor(cache_dir, "mustrec_item_graph", key, build)

    def _current_ui_graph(self):
        if not self.training or self.pruner is None:
            return self.ui_graph_full
        if self._ui_graph_epoch is None:
            self.on_epoch_start(0)
        return self._ui_graph_epoch

    def on_epoch_start(self, epoch_idx):
        """Trainer hook: this epoch's BPR negatives and degree-pruned user-item graph."""
        self._epoch = int(epoch_idx)
        if self.pruner is not None and self.stage != "head":
            self._ui_graph_epoch = self.pruner.sample().to(self.device)

    def graph_representations(self, ui_graph=None):
        """``(h_u [U, d], h_i [N, d])`` of Eqs 7-9; PAD rows are zero."""
        users, items = self.user_embedding.weight, self.item_embedding.weight
        if self.use_ui_graph:
            adjacency = ui_graph if ui_graph is not None else self._current_ui_graph()
            ego = torch.cat([users, items], dim=0)
            propagated = lightgcn_propagate(adjacency, ego, self.n_ui_layers, self.ui_layer_combine)
            users, items = propagated[: self.n_users], propagated[self.n_users:]
        if self.use_item_graph:
            item_item = self.item_embedding.weight
            for _ in range(self.n_ii_layers):
                item_item = graph_matmul(self.item_item_graph, item_item)
            items = items + item_item if self.use_ui_graph else item_item
        pad = torch.zeros(1, dtype=torch.long, device=users.device)
        return users.index_fill(0, pad, 0.0), items.index_fill(0, pad, 0.0)

    def graph_parameters(self):
        """Parameters of the graph part (frozen in MuSTRec-S stage 2)."""
        modules = [self.user_embedding, self.item_embedding, self.feature_tables, self.modal_projections]
        return [p for m in modules for p in m.parameters()]

    # ------------------------------------------------------------------ head
    def _head_tables(self, h_user, h_item):
        if self.stage == "head":
            return self.frozen_user, self.frozen_item
        if self.seq_item_source == "graph":
            return h_user, h_item
        return self.user_embedding.weight, self.item_embedding.weight

    def forward(self, item_seq, item_seq_len, item_table, user_table=None, user_ids=None):
        """Last-position output ``[B, d]`` of the head for right-padded ``item_seq``."""
        left = right_to_left_padding(item_seq, item_seq_len)
        x, valid = item_table[left], left > 0
        if self.user_token:  # MuSTRec-U: h_u right before the first item, all L items kept
            batch, length = left.shape
            x = torch.cat([x.new_zeros(batch, 1, x.shape[-1]), x], dim=1)
            slots = torch.arange(length + 1, device=left.device).unsqueeze(0)
            token = slots == (length - item_seq_len).unsqueeze(1)
            x = torch.where(token.unsqueeze(-1), user_table[user_ids].unsqueeze(1), x)
            valid = torch.cat([valid.new_zeros(batch, 1), valid], dim=1) | token
        x = self.input_dropout(self.input_layer_norm(x + self.position_embedding.weight.unsqueeze(0)))
        return self.encoder(x, attention_mask(valid, causal=True), last_only=True)  # only h at L-1 is read

    # ------------------------------------------------------------------ training
    def sample_negatives(self, users, positions):
        """One item per row, uniform over non-PAD items outside the user's training history.

        Each row's draw is a function of (seed, epoch, user, target position) only: the same
        row gets the same negative whatever batch, order or process (DDP rank) it lands in, and
        a fresh one every epoch. A draw inside the history is redrawn with the next attempt
        counter (at most 100 times)."""
        users, positions = users.cpu(), positions.cpu()
        user_keys, position_keys = users.numpy(), positions.numpy()

        def draw(rows, attempt):
            return torch.from_numpy(keyed_randint(1, self.n_items, self.seed, self._epoch, user_keys[rows],
                                                  position_keys[rows], attempt))

        negatives = draw(slice(None), 0)
        keys = self.history_keys.cpu()
        for attempt in range(1, 101):
            clash = is_member(users * self.n_items + negatives, keys)
            if not clash.any():
                break
            negatives[clash] = draw(clash.numpy(), attempt)
        return negatives.to(self.device)

    def bpr_terms(self, h_user, h_item, users, positives, negatives):
        """Eq 18: ``BPR(h) + lambda * sum_m BPR(W_m x^m + b_m)`` (batch means)."""
        user = h_user[users]
        loss = bpr_loss(user, h_item[positives], h_item[negatives])
        if self.modal_bpr:
            pairs = torch.cat([positives, negatives])  # one lookup: one gradient buffer per table
            for name, projection in self.modal_projections.items():
                projected_pos, projected_neg = projection(self.feature_tables[name](pairs)).chunk(2)
                loss = loss + self.reg_weight * bpr_loss(user, projected_pos, projected_neg)
        return loss

    def calculate_loss(self, interaction):
        users, positives = interaction[self.USER_ID], interaction[self.POS_ITEM_ID]
        loss = torch.zeros((), device=self.device)
        h_user = h_item = None
        if self.stage != "head" and (self.w_bpr > 0 or self.seq_item_source == "graph"):
            h_user, h_item = self.graph_representations()
        if self.stage != "head" and self.w_bpr > 0:
            # a row = (user, target position); RecBole-style datasets without the field fall back
            # to the sequence length, which is unique per user below MAX_ITEM_LIST_LENGTH
            positions = (interaction[TARGET_POSITION_FIELD] if TARGET_POSITION_FIELD in interaction
                         else interaction[self.ITEM_SEQ_LEN])
            negatives = self.sample_negatives(users, positions)
            loss = loss + self.w_bpr * self.bpr_terms(h_user, h_item, users, positives, negatives)
        if self.stage == "graph":
            return loss
        omega = 1.0 if self.stage == "head" else self.omega
        if omega > 0:
            user_table, item_table = self._head_tables(h_user, h_item)
            x = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN],
                             item_table, user_table, users)
            # softmax over the real items 1..n (PAD, column 0, is left out, not set to -inf)
            logits = x @ item_table[1:].t()
            loss = loss + omega * F.cross_entropy(logits, positives - 1)
        return loss

    # ------------------------------------------------------------------ evaluation
    def train(self, mode=True):
        self._eval_cache = None  # parameters are about to change
        return super().train(mode)

    def _cached_representations(self):
        if self._eval_cache is None or self.training:
            with torch.no_grad():
                needs_graph = self.stage == "graph" or (self.stage == "joint" and self.seq_item_source == "graph")
                h = self.graph_representations(self.ui_graph_full) if needs_graph else (None, None)
            self._eval_cache = h
        return self._eval_cache

    def _user_and_scores_table(self, interaction):
        h_user, h_item = self._cached_representations()
        users = interaction[self.USER_ID]
        if self.stage == "graph":  # MuSTRec-S stage 1: the graph part scores alone
            return h_user[users], h_item
        user_table, item_table = self._head_tables(h_user, h_item)
        x = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], item_table, user_table, users)
        return x, item_table

    def predict(self, interaction):
        query, item_table = self._user_and_scores_table(interaction)
        items = interaction[self.ITEM_ID]
        scores = (query * item_table[items]).sum(-1)
        return scores.masked_fill(items == 0, float("-inf"))

    def full_sort_predict(self, interaction):
        def score_rows(rows):  # evaluation: chunks of rows that fit in cache (layers/eval_chunks.py)
            query, item_table = self._user_and_scores_table(interaction[rows])
            return query @ item_table.t()

        if self.training:
            scores = score_rows(slice(None))
        else:
            scores = score_in_chunks(score_rows, len(interaction))
        if self.stage == "graph":  # stage-1 validation: mask the training history
            rows, cols = history_entries(interaction[self.USER_ID], self.history_keys, self.n_items)
            scores[rows, cols] = float("-inf")
        scores[:, 0] = float("-inf")
        return scores

    # ------------------------------------------------------------------ MuSTRec-S
    def set_stage(self, stage):
        """``'graph'``: stage 1 (BPR only, graph scores); ``'head'``: stage 2 (frozen h, CE)."""
        if stage not in ("joint", "graph", "head"):
            raise ValueError(f"stage must be 'joint', 'graph' or 'head', got {stage!r}")
        if stage == "head":
            with torch.no_grad():
                h_user, h_item = self.graph_representations(self.ui_graph_full)
            self._set_head_tables(h_user, h_item)
        self.stage = stage
        self._eval_cache = None

    def _set_head_tables(self, h_user, h_item):
        """Stage 2 of MuSTRec-S: freeze the graph part and score with the tables ``h_user, h_item``."""
        for parameter in self.graph_parameters():
            parameter.requires_grad_(False)
        if self.freeze_pretrained:
            self.frozen_user, self.frozen_item = h_user.detach().clone(), h_item.detach().clone()
        else:  # trainable copies (the official code's vestigial hook)
            self.frozen_user = nn.Parameter(h_user.detach().clone())
            self.frozen_item = nn.Parameter(h_item.detach().clone())
        self.stage = "head"
        self._eval_cache = None

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """A stage-2 checkpoint of MuSTRec-S holds its tables: loading it puts this model in
        stage 2 with them, so a reloaded model scores exactly as the saved one."""
        if state_dict.get("frozen_item") is not None and self.stage != "head":
            self._set_head_tables(state_dict["frozen_user"].to(self.device), state_dict["frozen_item"].to(self.device))
        self._eval_cache = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def optimizer_param_groups(self):
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]


class MuSTRecTrainer(MMTrainer):
    """MMTrainer plus MuSTRec-S: stage 1 trains the graph part with BPR (early stopping on the
    graph's validation HR@20, history masked), stage 2 freezes it and trains the head with CE."""

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        model = self.model
        if self.config["leakage_check"] and valid_data:
            check_eval_histories(train_data.dataset, valid_data.dataset, model.max_seq_length)
        if not model.pretrain_graph:
            return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        path = _get(self.config, "pretrained_graph_path")
        if path:
            state = torch.load(path, map_location=self.device, weights_only=False)
            model.load_state_dict(state.get("state_dict", state), strict=False)
        else:
            self._train_graph_stage(train_data, valid_data, verbose, saved, show_progress)
        model.set_stage("head")
        self.optimizer = self._build_optimizer(params=[p for p in model.parameters() if p.requires_grad])
        self._reset_early_stopping()
        return super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)

    def resume_checkpoint(self, resume_file):
        if self.model.pretrain_graph:  # two fits in one run: a saved epoch does not say which stage
            raise ConfigError("resume is not supported for MuSTRec-S (pretrain_graph: true). Fix: rerun, "
                              "reusing a finished graph stage with pretrained_graph_path.")
        return super().resume_checkpoint(resume_file)

    def _reset_early_stopping(self):
        self.start_epoch, self.cur_step = 0, 0
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.best_valid_result = None

    def _train_graph_stage(self, train_data, valid_data, verbose, saved, show_progress):
        model = self.model
        model.set_stage("graph")
        epochs, stopping = self.epochs, self.stopping_step
        self.epochs = int(_get(self.config, "pretrain_epochs", epochs))
        self.stopping_step = int(_get(self.config, "pretrain_stopping_step", stopping))
        best = {}

        def keep_best(epoch_idx, valid_score):
            if self.cur_step == 0:  # this evaluation improved on the best so far
                best["state"] = copy.deepcopy(model.state_dict())

        self._reset_early_stopping()
        super().fit(train_data, valid_data, verbose, saved=False, show_progress=show_progress, callback_fn=keep_best)
        if "state" in best:
            model.load_state_dict(best["state"])
        if saved and self._writes_files():  # reusable through `pretrained_graph_path`; one writer under DDP
            path = self.saved_model_file.replace(".pth", "") + "-graph-stage.pth"
            state = {"state_dict": model.state_dict(), "config": self.config}
            atomic_write(path, lambda handle: torch.save(state, handle))
            self.logger.info(f"MuSTRec-S: graph stage saved to {path}")
        if verbose:
            self.logger.info(f"MuSTRec-S: graph stage done (best valid {self.best_valid_score})")
        self.epochs, self.stopping_step = epochs, stopping
