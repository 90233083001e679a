r"""FeatureSASRec: SASRec whose item vectors add a learned projection of frozen item features.

A baseline of this project, **not a published method**: it answers whether a multimodal model's
gain comes from its mechanism or merely from seeing the same features. Everything is RecBole's
SASRec (Kang and McAuley, ICDM 2018) except the item table, used both as input and for scoring:

.. math::

    \mathbf{e}_i = \mathbf{E}^{id}_i + \sum_{m} \mathbf{W}_m \mathbf{x}^m_i

with :math:`\mathbf{x}^m_i` the dataset's frozen feature of item *i* in modality *m* (zero where the
item has none) and :math:`\mathbf{W}_m` a trainable linear map to the embedding size
(:class:`FeatureItemTable`). The modalities are those the dataset loads (``modalities``, default: all);
``use_id_embedding: false`` drops :math:`\mathbf{E}^{id}` (a feature-only SASRec).

Keys (``properties/model/FeatureSASRec.yaml``): SASRec's, with ``embedding_size`` as the width.
More in ``docs/models/FeatureSASRec.md``.
"""
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import TransformerEncoder
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import nn

from recbole_mm.errors import ConfigError


class FeatureItemTable(nn.Module):
    """Item vectors :math:`E^{id}_i + \\sum_m W_m x^m_i`; ``table(ids)`` looks rows up and
    ``table.weight`` is the whole table, so SASRec's scoring code uses it unchanged."""

    def __init__(self, n_items, embedding_size, features, use_id_embedding=True):
        super().__init__()
        self.id_embedding = nn.Embedding(n_items, embedding_size, padding_idx=0) if use_id_embedding else None
        self.names = list(features)
        self.projections = nn.ModuleDict()
        for name, values in features.items():
            self.register_buffer(f"feature_{name}", values.float(), persistent=False)
            self.projections[name] = nn.Linear(values.shape[1], embedding_size, bias=False)

    def forward(self, item_ids):
        vectors = self.id_embedding(item_ids) if self.id_embedding is not None else 0.0
        for name in self.names:
            vectors = vectors + self.projections[name](getattr(self, f"feature_{name}")[item_ids])
        return vectors

    @property
    def weight(self):
        table = self.id_embedding.weight if self.id_embedding is not None else 0.0
        for name in self.names:
            table = table + self.projections[name](getattr(self, f"feature_{name}"))
        return table


class FeatureSASRec(SASRec):
    r"""SASRec over :class:`FeatureItemTable` (see the module docstring)."""

    def __init__(self, config, dataset):
        SequentialRecommender.__init__(self, config, dataset)  # SASRec's own __init__ reads hidden_size
        self.n_layers = config["n_layers"]
        self.n_heads = config["n_heads"]
        self.hidden_size = config["embedding_size"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.attn_dropout_prob = config["attn_dropout_prob"]
        self.hidden_act = config["hidden_act"]
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.loss_type = config["loss_type"]

        features = self._frozen_features(config, dataset)
        self.item_embedding = FeatureItemTable(self.n_items, self.hidden_size, features,
                                               use_id_embedding=config["use_id_embedding"])
        self.position_embedding = nn.Embedding(self.max_seq_length, self.hidden_size)
        self.trm_encoder = TransformerEncoder(
            n_layers=self.n_layers, n_heads=self.n_heads, hidden_size=self.hidden_size, inner_size=self.inner_size,
            hidden_dropout_prob=self.hidden_dropout_prob, attn_dropout_prob=self.attn_dropout_prob,
            hidden_act=self.hidden_act, layer_norm_eps=self.layer_norm_eps,
        )
        self.LayerNorm = nn.LayerNorm(self.hidden_size, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        if self.loss_type == "CE":
            self.loss_fct = nn.CrossEntropyLoss()
        else:
            from recbole.model.loss import BPRLoss

            self.loss_fct = BPRLoss()
        self.apply(self._init_weights)

    @staticmethod
    def _frozen_features(config, dataset):
        """The dataset's feature tables (those ``modalities`` loads) with missing rows zeroed."""
        loaded = list(getattr(dataset, "item_features", {}))
        if not loaded:
            raise ConfigError(f"FeatureSASRec needs item feature files, and dataset '{config['dataset']}' loads none. "
                              "Fix: declare multimodal_features for the dataset (or check modalities).")
        return {m: dataset.item_features[m] * dataset.item_feature_mask[m][:, None].float() for m in loaded}
