"""MMSR: Adaptive Multi-Modalities Fusion in Sequential Recommendation Systems.

Hengchang Hu, Wei Guo, Yong Liu, Min-Yen Kan. CIKM 2023. https://arxiv.org/abs/2308.15980
Official code: github.com/HoldenHu/MMSR (model ``VLGraph``).  Equation-to-code map, official-code
differences (B1-B15) and the switches of the paper's tables: ``docs/models/MMSR.md``.

Pipeline (paper section / equation):
- §4.1 modality codes: every modality feature is reduced (linear AE) and clustered (k-means,
  c codes); an item links to its top-k codes (``layers/mmsr_codes.py``).  ``code_num: 0`` is the
  no-code point of Fig. 5: one node per item modality, a learned Linear of its AE feature.
- §4.1 MSGraph per sequence: distinct item nodes and code nodes; homogeneous transition edges
  (out / in / bidirectional), heterogeneous same-position edges, self-loops; built for the whole
  batch as tensors (``layers/msgraph.py``).  By default (``graph_backend: sparse``) the layers run
  on the active nodes only, with edge lists and a segment softmax, and the last layer computes
  phase 2 and the gate for the readout nodes only; ``dense`` (masked [B, N, N] attention) gives
  the same results and serves as a cross-check.
- §4.2 node input: ``x_n = W [e_n; e_ty(type_n); mean of PosEmb over the positions of n]``.
- §4.3 HAN-GNN layers (``layers/han_gnn.py``): heterogeneity-aware dual attention (Eq. 12-14),
  asynchronous hohe/heho update with the gate (Eq. 16-17), non-invasive fusion; or Eq. 15
  (sync) and the baseline aggregators GCN/SAGE/GAT/RGAT of Table 3.
- §4.4 readout: the last item's node ("last pooling"); scores ``P . E_v^T`` (Eq. 7); CE loss.

Official-code bugs not reproduced (``docs/models/MMSR.md``): K and V are distinct projections (B1), non-invasive
hohe attends from the homogeneous state (B2) and phase 2 re-projects (B3); the gate is Eq. 16
(B4, official gate: ``gate: shared``); model selection uses validation and RecBole's metrics (B6, B7).

Any number (>= 1) of modalities works: node type 0 is the item, type m the m-th modality of
``dataset.modalities`` (optionally restricted by ``modalities``).  Missing modalities
(Fig. 4): a seeded fraction of items can have a modality hidden (``missing_mode: item``) or each
(sequence, position) can drop it (``missing_mode: position``, official behaviour); the hidden
features then give no node and no edge.
"""
import numpy as np
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_mm.checks import require_cross_entropy, select_modalities
from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.han_gnn import GraphAggregatorLayer, HANLayer
from recbole_mm.model.layers.mmsr_codes import ItemModalityEmbedding, fit_modality_codes
from recbole_mm.model.layers.msgraph import PackedGraph, build_msgraph, pack_graph


class MMSRConfigError(ConfigError):
    """Bad MMSR configuration; the message names the key and the fix."""


class MMSR(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        require_cross_entropy(config, "MMSR", MMSRConfigError)
        self.dim = config["embedding_size"]
        self.use_pos_emb = config["use_pos_emb"]
        self.use_type_emb = config["use_type_emb"]
        self.graph_layout = "compact" if config["graph_layout"] in (None, "auto") else config["graph_layout"]
        self.code_num, self.code_k = int(config["code_num"]), int(config["code_k"])
        if self.code_num < 0 or (self.code_num > 0 and not 1 <= self.code_k <= self.code_num):
            raise MMSRConfigError("need 1 <= code_k <= code_num, or code_num = 0 for one node per item "
                                  f"modality (got code_num={self.code_num}, code_k={self.code_k}). "
                                  "Fix: change code_num / code_k in MMSR.yaml.")
        if self.code_num == 0:
            self.code_k = 1  # every item modality is its own single "code"; code_k is ignored
        self.seed = int(config["seed"] or 0)
        self.modalities = select_modalities(config, getattr(dataset, "modalities", []), "MMSR", MMSRConfigError)
        self.missing_mode = config["missing_mode"] or "item"
        self.missing_phase = config["missing_phase"] or "both"
        self.missing_ratio = self._missing_ratios(config)
        self.missing_seed = int(config["missing_seed"] if config["missing_seed"] is not None else self.seed)

        self.item_embedding = nn.Embedding(self.n_items, self.dim, padding_idx=0)
        self.code_embeddings = nn.ModuleList(  # per modality: code table, or item-modality nodes (Fig. 5)
            nn.Embedding(self.code_num, self.dim) if self.code_num
            else ItemModalityEmbedding(self.n_items, self.dim) for _ in self.modalities)
        self.type_embedding = nn.Embedding(1 + len(self.modalities), self.dim)
        self.position_embedding = nn.Embedding(self.max_seq_length, self.dim)
        n_blocks = 1 + int(self.use_type_emb) + int(self.use_pos_emb)
        self.input_projection = nn.Linear(n_blocks * self.dim, self.dim, bias=False) if n_blocks > 1 else None
        aggregator = config["aggregator"] or "han"
        if int(config["n_layers"]) < 1:
            raise MMSRConfigError(f"n_layers must be >= 1 (got {config['n_layers']}).")
        backend = config["graph_backend"] or "sparse"
        if backend not in ("sparse", "dense"):
            raise MMSRConfigError(f"graph_backend must be sparse|dense, got {backend!r}.")
        self.sparse = backend == "sparse" and aggregator == "han"  # baselines run dense
        n_types = 1 + len(self.modalities)
        self.layers = nn.ModuleList(
            HANLayer(self.dim, n_types, config["han_mode"], config["non_invasive"], config["gate"],
                     config["leaky_slope"], config["attn_dropout_prob"], config["attn_scale"], config["global_attn"])
            if aggregator == "han" else
            GraphAggregatorLayer(self.dim, aggregator, leaky_slope=config["leaky_slope"],
                                 attn_dropout=config["attn_dropout_prob"])
            for _ in range(config["n_layers"])
        )
        self.hidden_dropout = nn.Dropout(config["hidden_dropout_prob"])
        self.loss_fct = nn.CrossEntropyLoss()

        centres = self._build_codes(config, dataset)
        if config["code_init"] not in ("centre", "random"):
            raise MMSRConfigError(f"code_init must be centre|random, got {config['code_init']!r}.")
        self._reset_parameters(centres, config["code_init"] == "centre")
        self._eval_generator = None

    # ------------------------------------------------------------------ setup
    def _missing_ratios(self, config):
        ratios = dict(config["missing_ratio"] or {})
        unknown = [m for m in ratios if m not in self.modalities]
        if unknown:
            raise MMSRConfigError(f"missing_ratio names {unknown}, not among the modalities {self.modalities}.")
        if self.missing_mode not in ("item", "position") or self.missing_phase not in ("both", "train", "test"):
            raise MMSRConfigError("missing_mode must be item|position and missing_phase both|train|test "
                                  f"(got {self.missing_mode!r}, {self.missing_phase!r}).")
        for name, ratio in ratios.items():
            if not 0.0 <= float(ratio) <= 1.0:
                raise MMSRConfigError(f"missing_ratio['{name}'] = {ratio} must lie in [0, 1].")
        return {m: float(ratios.get(m, 0.0)) for m in self.modalities}

    def hidden_items(self, index, present):
        """Seeded item subset whose modality ``index`` is hidden (``missing_mode: item``)."""
        ratio = self.missing_ratio[self.modalities[index]]
        hidden = torch.zeros_like(present)
        candidates = torch.nonzero(present).flatten()
        n_hide = int(round(ratio * len(candidates)))
        if self.missing_mode == "item" and n_hide > 0:
            rng = np.random.default_rng([self.missing_seed, index])
            hidden[candidates[torch.from_numpy(rng.permutation(len(candidates))[:n_hide])]] = True
        return hidden

    def _build_codes(self, config, dataset):
        train_items = None
        if config["code_fit_items"] == "train":
            train_items = torch.from_numpy(np.asarray(dataset.train_interaction_matrix().sum(0)).ravel() > 0)
        elif config["code_fit_items"] != "all":
            raise MMSRConfigError(f"code_fit_items must be train|all, got {config['code_fit_items']!r}.")
        try:
            cache_dir, fingerprint = dataset.graph_cache_dir, dataset.fingerprint
        except (AttributeError, KeyError, TypeError):
            cache_dir, fingerprint = None, None
        all_centres = []
        for index, name in enumerate(self.modalities):
            present = dataset.item_feature_mask[name].bool().clone()
            present[0] = False
            hidden = self.hidden_items(index, present)
            fit = present if train_items is None else present & train_items
            if self.missing_phase in ("both", "train"):
                fit = fit & ~hidden  # hidden items never shape the codes they are hidden from
            if self.missing_phase in ("both", "train") and bool((hidden == present).all()):
                codes = torch.full((self.n_items, self.code_k), -1, dtype=torch.long)  # nothing left to fit
                self.register_buffer(f"train_item_codes_{index}", codes)
                self.register_buffer(f"eval_item_codes_{index}", codes.clone())
                all_centres.append(None)
                continue
            centres, codes = fit_modality_codes(
                dataset.item_features[name], present, fit, self.dim, self.code_num, self.code_k,
                reduce=config["code_reduce"], assign=config["code_assign"], ae_epochs=config["code_ae_epochs"],
                ae_lr=config["code_ae_lr"], seed=self.seed, cache_dir=cache_dir,
                cache_key=None if fingerprint is None else {"dataset": fingerprint, "modality": name})
            hidden_codes = codes.masked_fill(hidden[:, None], -1)
            train_codes = hidden_codes if self.missing_phase in ("both", "train") else codes
            eval_codes = hidden_codes if self.missing_phase in ("both", "test") else codes
            self.register_buffer(f"train_item_codes_{index}", train_codes.long())
            self.register_buffer(f"eval_item_codes_{index}", eval_codes.long())
            all_centres.append(centres)
        return all_centres

    def _reset_parameters(self, centres, init_from_centres):
        """Official initialisation: every parameter U(+-1/sqrt(d)); code rows from the centres.

        With ``code_num: 0`` the "centres" are the items' AE features, the input of the
        item-modality projection, loaded whatever ``code_init`` says.
        """
        bound = 1.0 / np.sqrt(self.dim)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.uniform_(-bound, bound)
            self.item_embedding.weight[0].zero_()
            for table, rows in zip(self.code_embeddings, centres):
                if rows is not None and isinstance(table, ItemModalityEmbedding):
                    table.ae_features.copy_(rows)
                elif rows is not None and init_from_centres:
                    table.weight.copy_(rows)

    # ------------------------------------------------------------------ graph and layers
    def item_codes(self):
        prefix = "train" if self.training else "eval"
        return [getattr(self, f"{prefix}_item_codes_{i}") for i in range(len(self.modalities))]

    def on_eval_start(self):
        """Reset the generator of per-position modality dropping so every evaluation is identical."""
        self._eval_generator = torch.Generator(device=self.item_embedding.weight.device)
        self._eval_generator.manual_seed(self.missing_seed)

    def position_keep(self, item_seq):
        """Per modality bool [B, L] (``missing_mode: position``) or None."""
        phase = "train" if self.training else "test"
        if self.missing_mode != "position" or self.missing_phase not in ("both", phase):
            return None
        if not self.training and self._eval_generator is None:
            self.on_eval_start()
        generator = None if self.training else self._eval_generator
        keep = []
        for name in self.modalities:
            ratio = self.missing_ratio[name]
            if ratio <= 0:
                keep.append(None)
                continue
            draw = torch.rand(item_seq.shape, generator=generator, device=item_seq.device)
            keep.append(draw >= ratio)
        return keep

    def build_graph(self, item_seq, item_seq_len):
        n_codes = self.code_num or self.n_items  # code_num 0: the item ids are the codes
        return build_msgraph(item_seq, item_seq_len, self.item_codes(), [n_codes] * len(self.modalities),
                             self.graph_layout, self.position_keep(item_seq))

    def node_input(self, graph):
        """x_n = W_in [e_n; e_ty; e_po] (§4.2), for a packed graph [P, d] or a dense one [B, N, d]."""
        parts = []
        for t, (start, end) in enumerate(graph.type_slices):
            table = self.item_embedding if t == 0 else self.code_embeddings[t - 1]
            parts.append(table(graph.node_ids[..., start:end]))
        blocks = [torch.cat(parts, dim=-2)]
        if self.use_type_emb:
            sizes = torch.tensor([end - start for start, end in graph.type_slices], device=blocks[0].device)
            types = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)
            blocks.append(self.type_embedding(types).expand_as(blocks[0]))
        if self.use_pos_emb:
            positions = graph.positions
            table = self.position_embedding.weight[: positions.shape[-1]]
            blocks.append(torch.matmul(positions, table) / positions.sum(-1, keepdim=True).clamp(min=1))
        x = blocks[0] if self.input_projection is None else self.input_projection(torch.cat(blocks, dim=-1))
        return x if isinstance(graph, PackedGraph) else x * graph.active.unsqueeze(-1)

    def forward(self, item_seq, item_seq_len):
        graph = self.build_graph(item_seq, item_seq_len)
        if self.sparse:  # active nodes only, edge lists
            graph = pack_graph(graph)
            hidden = self.node_input(graph)
            for index, layer in enumerate(self.layers):
                last = index == len(self.layers) - 1
                hidden = self.hidden_dropout(layer(hidden, graph, graph.readout if last else None))
            return hidden  # the last layer returns the readout rows only
        hidden = self.node_input(graph)
        for layer in self.layers:
            hidden = self.hidden_dropout(layer(hidden, graph)) * graph.active.unsqueeze(-1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), graph.readout]

    # ------------------------------------------------------------------ RecBole API
    def calculate_loss(self, interaction):
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = torch.matmul(user, self.item_embedding.weight.t())
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (user * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        user = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return torch.matmul(user, self.item_embedding.weight.t())
