"""MDSRec: Multimodal Difference Learning for Sequential Recommendation.

Li, Guo, Li, Zou, AAAI 2025. No official code exists; every reading of an ambiguous passage is
a config key (``properties/model/MDSRec.yaml``). Equation-to-code map, the reasons for each
default and the switches of the paper's tables: ``docs/models/MDSRec.md``.

Item side (built once from the training split, cached; see ``layers/mdsrec_item_graphs.py``):
  O        co-occurrence of training sequences, O_ij = sum_u 1/D_ij           (Eq. 1-2)
  Ō        normalised O (``cooc_norm``)
  Ē^m      = mu_m Ō E^m + E^m, behaviour injected into modal features         (Eq. 3)
  Â^m      top-H cosine graph of Ē^m, normalised to Ã^m                         (Eq. 4-5)
  C^m      k-means assignment of the raw features E^m                           (Eq. 10)
Every step:
  Ē^id     = mu_id Ō E^id + E^id                                                (Eq. 3)
  Ê^m      = Ã^m E^id, one light graph convolution per modality                 (Eq. 6)
  Ê^m_c    = C^m Ê^m, centre features                                           (Eq. 11)
  towers   SASRec encoders over Ē^id[S]+P and Ê^m[S]+P, one per channel         (Eq. 7-9)
  E^m_c    interest-centralised attention of the centres over tower m           (Eq. 12-16)
  e^s      = sum_m rho_m e^m + e^id, last positions                              (Eq. 17)
  ẽ^m      = e^m + gamma E^m_c, gamma = Gumbel-softmax over the k centres         (Eq. 18-19)
  scores   ŷ^s = e^s E^id^T, ŷ^m = ẽ^m Ê^m^T, ŷ = ŷ^s + sum_m rho_m ŷ^m            (Eq. 20-22)
  loss     CE(ŷ^s) + sum_m rho_m CE(ŷ^m)                                         (Eq. 23-24)
The Gumbel softmax chooses among one modality's interest centres; channels are fused by the
fixed weights rho (Eq. 17, 22, 23).

Speed (docs/benchmarks/mdsrec.md): dropout everywhere is ``layers/dropout.py:MaskDropout`` (the
towers' ``nn.Dropout`` swapped at construction; same distribution, cheaper CPU masks); the towers'
GELU is torch's kernel (``layers/activation.py``; RecBole's composite form computes the same
function); the graph products go through ``layers/sparse_matmul.py:graph_matmul`` (cached CSR
copies).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.utils import InputType

from recbole_mm.checks import require_cross_entropy, select_modalities
from recbole_mm.errors import ConfigError
from recbole_mm.model.layers.activation import use_fused_activations
from recbole_mm.model.layers.dropout import use_mask_dropout
from recbole_mm.model.layers.initialization import init_sasrec_weights
from recbole_mm.model.layers.interest_attention import InterestCentralisedAttention, centre_relation_weights
from recbole_mm.model.layers.eval_chunks import score_by_length, trim_padding
from recbole_mm.model.layers.mdsrec_item_graphs import build_item_side, check_choice
from recbole_mm.model.layers.sparse_matmul import graph_matmul

ID_CHANNEL = "id"


def resolve_modalities(config, available):
    """The channels' modalities: config key ``modalities`` (~ = every modality of the dataset)."""
    modalities = select_modalities(config, available, "MDSRec")
    if ID_CHANNEL in modalities:
        raise ConfigError(f"a modality may not be named '{ID_CHANNEL}' (reserved for the ID channel).")
    return modalities


def resolve_rho(rho, modalities):
    """``rho`` key: null = equal weights; a mapping {modality: weight} summing to 1; or a list."""
    if rho is None:
        return {m: 1.0 / len(modalities) for m in modalities}
    if isinstance(rho, (int, float)) and len(modalities) == 1:
        rho = {modalities[0]: rho}
    if isinstance(rho, (list, tuple)):
        if len(rho) != len(modalities):
            raise ConfigError(f"config key 'rho' has {len(rho)} values for modalities {modalities}.")
        rho = dict(zip(modalities, rho))
    if not isinstance(rho, dict) or set(rho) != set(modalities):
        raise ConfigError(f"config key 'rho' must map exactly the modalities {modalities} to weights, got {rho!r}.")
    rho = {m: float(rho[m]) for m in modalities}
    if abs(sum(rho.values()) - 1.0) > 1e-6 or min(rho.values()) < 0:
        raise ConfigError(f"config key 'rho' must hold non-negative weights summing to 1 (Eq. 17), got {rho}.")
    return rho


class MDSRec(SequentialRecommender):
    """Multimodal difference learning: modal item graphs, per-modality towers, interest centres."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        require_cross_entropy(config, "MDSRec")  # Eq. 23-24
        self.embedding_size = config["embedding_size"]
        self.n_layers = config["n_layers"]
        self.initializer_range = config["initializer_range"]
        self.mu_id = float(config["mu_id"])
        self.use_mrgc = bool(config["use_mrgc"])
        self.use_ica = bool(config["use_ica"])
        self.graph_input = check_choice(config, "graph_input", ("raw", "injected"))
        self.score_item_emb = check_choice(config, "score_item_emb", ("raw", "injected"))
        self.loss_on_fused = bool(config["loss_on_fused"])
        self.gumbel_tau = float(config["gumbel_tau"])
        self.gumbel_noise = check_choice(config, "gumbel_noise", ("logistic", "gumbel", "none"))
        self.gumbel_hard = bool(config["gumbel_hard"])
        self.gumbel_eval = check_choice(config, "gumbel_eval", ("soft", "hard", "sample"))
        self.modalities = resolve_modalities(config, dataset.modalities)
        self.rho = resolve_rho(config["rho"], self.modalities)
        self.channels = [ID_CHANNEL] + self.modalities

        # ---- item side, built from the training split only (frozen buffers)
        side = build_item_side(config, dataset, self.modalities)
        self.register_buffer("cooc_indices", side["cooc_indices"], persistent=False)
        self.register_buffer("cooc_values", side["cooc_values"], persistent=False)
        for m in self.modalities:
            if self.use_mrgc:
                self.register_buffer(f"graph_{m}_indices", side["graphs"][m][0], persistent=False)
                self.register_buffer(f"graph_{m}_values", side["graphs"][m][1], persistent=False)
            else:  # w/o MRGC: the raw features feed a trainable projection
                self.register_buffer(f"raw_features_{m}", side["features"][m], persistent=False)
                self.register_buffer(f"feature_mask_{m}", side["masks"][m], persistent=False)
            if self.use_ica:
                self.register_buffer(f"centre_labels_{m}", side["labels"][m], persistent=False)
        self.n_centers = side["n_centers"]  # {m: k actually used}
        self._center_assign = check_choice(config, "center_assign", ("mean", "sum"))

        # ---- parameters
        d = self.embedding_size
        self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)  # E^id
        share_position = bool(config["share_position"])
        share_towers = bool(config["share_towers"])
        self.position_embedding = nn.ModuleDict(
            {c: nn.Embedding(self.max_seq_length, d) for c in (["shared"] if share_position else self.channels)}
        )
        tower_keys = ["shared"] if share_towers else self.channels
        self.towers = nn.ModuleDict({c: TransformerEncoder(
            n_layers=self.n_layers, n_heads=config["n_heads"], hidden_size=d, inner_size=config["inner_size"],
            hidden_dropout_prob=config["hidden_dropout_prob"], attn_dropout_prob=config["attn_dropout_prob"],
            hidden_act=config["hidden_act"], layer_norm_eps=config["layer_norm_eps"]) for c in tower_keys})
        self.input_norms = nn.ModuleDict({c: nn.LayerNorm(d, eps=config["layer_norm_eps"]) for c in tower_keys})
        self.input_dropout = nn.Dropout(config["hidden_dropout_prob"])
        if not self.use_mrgc:
            self.modal_projections = nn.ModuleDict(
                {m: nn.Linear(side["features"][m].shape[1], d) for m in self.modalities})
        if self.use_ica:
            self.centre_attention = nn.ModuleDict({m: InterestCentralisedAttention(
                self.n_layers, d, config["inner_size"], config["hidden_dropout_prob"], config["hidden_act"],
                config["layer_norm_eps"], center_ffn=check_choice(config, "center_ffn", ("literal", "residual")),
                share_out_proj=bool(config["center_share_out_proj"]),
                attn_scale=check_choice(config, "center_attn_scale", ("head", "model"))) for m in self.modalities})
        self._share_position, self._share_towers = share_position, share_towers
        self._item_table_cache = None
        self._graphs = {}  # prefix -> (buffer identity and versions, sparse tensor): see _sparse
        self.apply(lambda module: init_sasrec_weights(module, self.initializer_range))  # as RecBole's SASRec
        use_mask_dropout(self)  # towers, input and centre layers: same dropout, cheaper CPU masks
        use_fused_activations(self)  # the towers' GELU as torch's kernel, not RecBole's composite

    # ------------------------------------------------------------------ item-side tables
    def train(self, mode=True):
        self._item_table_cache = None  # tables are cached only between eval() and the next switch
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._item_table_cache = None
        return super().load_state_dict(*args, **kwargs)

    def on_eval_start(self):
        self._item_table_cache = None

    def _sparse(self, prefix):
        """The graph stored in the ``{prefix}_indices/_values`` buffers as one sparse tensor, rebuilt
        only when a buffer is replaced (device move) or changed in place, so that
        :func:`graph_matmul` can keep its CSR copies between steps."""
        indices, values = getattr(self, f"{prefix}_indices"), getattr(self, f"{prefix}_values")
        key = (indices.data_ptr(), values.data_ptr(), indices._version, values._version, values.device)
        cached = self._graphs.get(prefix)
        if cached is None or cached[0] != key:
            graph = torch.sparse_coo_tensor(indices, values, (self.n_items, self.n_items), is_coalesced=True,
                                            check_invariants=False)
            self._graphs[prefix] = cached = (key, graph)
        return cached[1]

    def injected_id_embeddings(self):
        """Ē^id = mu_id Ō E^id + E^id (Eq. 3)."""
        weight = self.item_embedding.weight
        if self.mu_id == 0 or self.cooc_values.numel() == 0:
            return weight
        return weight + self.mu_id * graph_matmul(self._sparse("cooc"), weight)

    def modal_item_embeddings(self, modality, injected_id):
        """Ê^m = Ã^m E^id (Eq. 6); w/o MRGC a trainable projection of the raw features."""
        if not self.use_mrgc:
            features = getattr(self, f"raw_features_{modality}")
            mask = getattr(self, f"feature_mask_{modality}").unsqueeze(1).to(features.dtype)
            return self.modal_projections[modality](features) * mask
        source = injected_id if self.graph_input == "injected" else self.item_embedding.weight
        return graph_matmul(self._sparse(f"graph_{modality}"), source)

    def centre_features(self, modality, modal_table):
        """Ê^m_c = C^m Ê^m (Eq. 11): the mean (``center_assign: mean``) or sum of members' rows."""
        labels = getattr(self, f"centre_labels_{modality}")
        members = labels >= 0
        centres = modal_table.new_zeros(self.n_centers[modality], modal_table.shape[1])
        centres = centres.index_add(0, labels[members], modal_table[members])
        if self._center_assign == "mean":
            counts = torch.bincount(labels[members], minlength=centres.shape[0]).clamp_min(1)
            centres = centres / counts.unsqueeze(1).to(centres.dtype)
        return centres

    def item_tables(self):
        """(Ē^id, {m: Ê^m}, {m: Ê^m_c}); cached in eval mode."""
        if not self.training and self._item_table_cache is not None:
            return self._item_table_cache
        injected_id = self.injected_id_embeddings()
        modal = {m: self.modal_item_embeddings(m, injected_id) for m in self.modalities}
        centres = {m: self.centre_features(m, modal[m]) for m in self.modalities} if self.use_ica else {}
        tables = (injected_id, modal, centres)
        if not self.training:
            self._item_table_cache = tables
        return tables

    # ------------------------------------------------------------------ sequence side
    def _encode(self, channel, table, item_seq, item_seq_len, causal_mask):
        """One tower (Eq. 7-9): returns the last valid state [B,d] and each layer's input."""
        key = "shared" if self._share_towers else channel
        positions = self.position_embedding["shared" if self._share_position else channel]
        position_ids = torch.arange(item_seq.size(1), device=item_seq.device).unsqueeze(0).expand_as(item_seq)
        hidden = self.input_dropout(self.input_norms[key](table[item_seq] + positions(position_ids)))
        outputs = self.towers[key](hidden, causal_mask, output_all_encoded_layers=True)
        layer_inputs = [hidden] + outputs[:-1]
        return self.gather_indexes(outputs[-1], item_seq_len - 1), layer_inputs, self.towers[key]

    def forward(self, item_seq, item_seq_len):
        """Returns (e^s [B,d], {m: ẽ^m [B,d]}, item tables)."""
        if not self.training:  # trailing PAD columns change nothing without dropout (layers/eval_chunks.py)
            item_seq = trim_padding(item_seq, item_seq_len)
        tables = self.item_tables()
        injected_id, modal, centres = tables
        causal_mask = self.get_attention_mask(item_seq)
        pad_mask = torch.where(item_seq != 0, 0.0, -10000.0).unsqueeze(1).unsqueeze(2)  # [B,1,1,t]
        e_id, _, _ = self._encode(ID_CHANNEL, injected_id, item_seq, item_seq_len, causal_mask)
        fused, centred = e_id, {}
        for m in self.modalities:
            e_m, layer_inputs, tower = self._encode(m, modal[m], item_seq, item_seq_len, causal_mask)
            fused = fused + self.rho[m] * e_m  # Eq. 17
            if self.use_ica:
                user_centres = self.centre_attention[m](centres[m], layer_inputs, pad_mask, tower)  # [B,k,d]
                logits = torch.einsum("bd,bkd->bk", e_m, user_centres)
                gamma = centre_relation_weights(logits, self.gumbel_tau, self.gumbel_noise, self.gumbel_hard,
                                                self.training, self.gumbel_eval)  # Eq. 19
                e_m = e_m + torch.einsum("bk,bkd->bd", gamma, user_centres)  # Eq. 18
            centred[m] = e_m
        return fused, centred, tables

    def _scoring_id_table(self, injected_id):
        return injected_id if self.score_item_emb == "injected" else self.item_embedding.weight

    def channel_logits(self, item_seq, item_seq_len):
        """{'id': ŷ^s [B,N], m: ŷ^m [B,N]} (Eq. 20-21)."""
        fused, centred, (injected_id, modal, _) = self.forward(item_seq, item_seq_len)
        logits = {ID_CHANNEL: fused @ self._scoring_id_table(injected_id).t()}
        for m in self.modalities:
            logits[m] = centred[m] @ modal[m].t()
        return logits

    def fuse_scores(self, channel_scores):
        """ŷ = ŷ^s + sum_m rho_m ŷ^m (Eq. 22)."""
        scores = channel_scores[ID_CHANNEL]
        for m in self.modalities:
            scores = scores + self.rho[m] * channel_scores[m]
        return scores

    def calculate_loss(self, interaction):
        logits = self.channel_logits(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        target = interaction[self.POS_ITEM_ID]
        loss = F.cross_entropy(logits[ID_CHANNEL], target)  # Eq. 23-24
        for m in self.modalities:
            loss = loss + self.rho[m] * F.cross_entropy(logits[m], target)
        if self.loss_on_fused:
            loss = loss + F.cross_entropy(self.fuse_scores(logits), target)
        return loss

    def predict(self, interaction):
        fused, centred, (injected_id, modal, _) = self.forward(interaction[self.ITEM_SEQ],
                                                              interaction[self.ITEM_SEQ_LEN])
        items = interaction[self.ITEM_ID]
        scores = {ID_CHANNEL: (fused * self._scoring_id_table(injected_id)[items]).sum(-1)}
        for m in self.modalities:
            scores[m] = (centred[m] * modal[m][items]).sum(-1)
        return self.fuse_scores(scores)

    def full_sort_predict(self, interaction):
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        if self.training or self.gumbel_eval == "sample":  # row order feeds the noise draw: keep it
            return self.fuse_scores(self.channel_logits(item_seq, item_seq_len))
        return score_by_length(lambda seq, lengths: self.fuse_scores(self.channel_logits(seq, lengths)),
                               item_seq, item_seq_len)
