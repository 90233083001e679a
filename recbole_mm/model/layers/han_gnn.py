"""Graph propagation layers of MMSR (Hu et al., CIKM 2023, §4.3) on batched MSGraphs.

``HANLayer`` is the Heterogeneity-aware, Asynchronous, Non-invasive GNN layer:
- homogeneous aggregation Ho(X, Y) (Eq. 12, 14): ``s_ij = a_{R_ij}^T (W_V x_i * W_V x_j)``,
  LeakyReLU, softmax over the homogeneous neighbours and the self-loop (relations 1-4),
  values ``W_V y_j``;
- heterogeneous aggregation He(X, Y) (Eq. 13, 14): ``s_ij = (W_Q x_i) . (W_K x_j)``, softmax
  over the heterogeneous neighbours and the self-loop, values ``W_V y_j``.  (The paper puts the
  query on the neighbour; naming the centre's projection "query" is the same model.)
- W_Q, W_K, W_V are type-specific (one per node type) and three distinct projections
  (the official code reuses W_Q for K and V; B1 in docs/models/MMSR.md).
- ``mode='async'`` (default): A = Ho(H,H), E = He(H,H); hohe = He(A, H), heho = Ho(E, H) when
  non-invasive (attention from the intermediate state, values from h^(l)), He(A, A) / Ho(E, E)
  when invasive; gate beta = softmax(MLP([hohe; heho])) (Eq. 16-17).
  ``sync``: Linear([Ho(H,H); He(H,H)]) (Eq. 15); ``hohe``/``heho``: one order, no gate;
  ``ho``/``he``: one aggregation only.
- Optional global attention (§5.4): G_i = sum_{active j} tanh(q_i . k_j) W_V h_j, mixed with the
  layer output by a second two-way gate.

Baseline aggregators of the paper's Table 3 that ignore node types (``GraphAggregatorLayer``):
GCN (Eq. 8), GraphSAGE (mean), GAT (Eq. 9-11) and RGAT (one attention vector per relation label).

``HANLayer`` runs on a dense ``MSGraphBatch`` (``h`` [B, N, d], masked [B, N, N] attention) or on a
``PackedGraph`` (``h`` [P, d] over the active nodes only, edge lists with a segment softmax: the
default, far cheaper since an MSGraph has O(N) edges).  The baselines run on the dense graph.
Every layer returns the same shape as ``h``; hidden dropout and zeroing of inactive nodes are
done by the caller.
"""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from recbole_mm.errors import ConfigError

from .msgraph import REL_BI, REL_HETERO, REL_SELF, PackedGraph

HAN_MODES = ("async", "sync", "hohe", "heho", "ho", "he")
AGGREGATORS = ("han", "gcn", "sage", "gat", "rgat")


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to ``mask``; rows without any neighbour give zeros."""
    scores = scores.masked_fill(~mask, float("-inf"))
    has_any = mask.any(-1, keepdim=True)
    scores = torch.where(has_any, scores, torch.zeros_like(scores))
    return torch.softmax(scores, dim=-1) * has_any


def project_by_type(x: torch.Tensor, weights: nn.ModuleList, type_slices: List[Tuple[int, int]]) -> torch.Tensor:
    """Apply weights[t] to the nodes of type t (nodes are grouped by type along dim -2)."""
    parts = [weights[t](x[..., start:end, :]) for t, (start, end) in enumerate(type_slices)]
    return torch.cat(parts, dim=-2)


def edge_softmax(scores: torch.Tensor, centre: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Softmax of edge scores over the edges of each centre node (every centre has a self-loop)."""
    peak = torch.full((n_nodes,), float("-inf"), dtype=scores.dtype, device=scores.device)
    peak = peak.scatter_reduce(0, centre, scores.detach(), "amax", include_self=True)
    weights = torch.exp(scores - peak[centre])
    total = torch.zeros(n_nodes, dtype=scores.dtype, device=scores.device).index_add(0, centre, weights)
    return weights / total[centre]


def to_dense(x: torch.Tensor, graph: PackedGraph) -> Tuple[torch.Tensor, torch.Tensor]:
    """Packed [P, d] -> dense [B, N, d] and its active mask [B, N]."""
    dense = x.new_zeros(graph.batch_size, graph.n_slots, x.shape[-1])
    dense[graph.node_batch, graph.node_slot] = x
    active = torch.zeros(graph.batch_size, graph.n_slots, dtype=torch.bool, device=x.device)
    active[graph.node_batch, graph.node_slot] = True
    return dense, active


class HANLayer(nn.Module):
    def __init__(self, dim, n_types, mode="async", non_invasive=True, gate="concat", leaky_slope=0.1,
                 attn_dropout=0.2, attn_scale=False, global_attn=False):
        super().__init__()
        if mode not in HAN_MODES:
            raise ConfigError(f"han_mode must be one of {HAN_MODES}, got {mode!r}")
        if gate not in ("concat", "shared"):
            raise ConfigError(f"gate must be 'concat' or 'shared', got {gate!r}")
        self.mode, self.non_invasive, self.gate_kind = mode, non_invasive, gate
        self.leaky_slope, self.scale = leaky_slope, dim ** -0.5 if attn_scale else 1.0
        self.query = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n_types))
        self.key = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n_types))
        self.value = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n_types))
        self.relation_vectors = nn.Parameter(torch.empty(REL_BI, dim))  # a_r, r = self, out, in, bi
        self.attn_dropout = nn.Dropout(attn_dropout)
        if mode == "async":
            if gate == "concat":  # Eq. 16: MLP over the concatenated candidates -> 2 scores
                self.gate = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 2))
            else:  # official: one scorer shared by both candidates
                self.gate = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        if mode == "sync":
            self.sync_linear = nn.Linear(2 * dim, dim)  # Eq. 15
        self.global_attn = global_attn
        if global_attn:
            self.global_gate = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 2))
        nn.init.xavier_uniform_(self.relation_vectors)
        self._memo = None  # projections / edge subsets shared within one forward

    # ----- helpers -------------------------------------------------------------------------
    def project(self, x, weights, graph):
        """Type-specific projection, memoised within one forward (W_V h is reused 4 times)."""
        if self._memo is None:  # called outside forward: no memo
            return project_by_type(x, weights, graph.type_slices)
        key = (id(x), id(weights))
        if key not in self._memo:
            self._memo[key] = (x, project_by_type(x, weights, graph.type_slices))
        return self._memo[key][1]

    def edges(self, kind, graph, centres):
        """(centre, neighbour, relation, output row, n_rows) of a packed graph's edges, optionally
        only the edges whose centre is in ``centres`` (rows then follow the order of ``centres``)."""
        key = (kind, id(centres))
        if self._memo is None or key not in self._memo:
            edges = graph.homo_edges if kind == "homo" else graph.hetero_edges
            relation = graph.homo_relation if kind == "homo" else None
            centre, neighbour, n_rows = edges[0], edges[1], len(graph.node_batch)
            row = centre
            if centres is not None:
                lookup = torch.full((n_rows,), -1, dtype=torch.long, device=centre.device)
                lookup[centres] = torch.arange(len(centres), device=centre.device)
                keep = lookup[centre] >= 0
                centre, neighbour = centre[keep], neighbour[keep]
                relation = relation[keep] if relation is not None else None
                row, n_rows = lookup[centre], len(centres)
            if self._memo is None:
                return centre, neighbour, relation, row, n_rows
            self._memo[key] = (None, (centre, neighbour, relation, row, n_rows))
        return self._memo[key][1]

    # ----- the two aggregations -------------------------------------------------------------
    def homo(self, x, y, graph, centres=None):
        """Ho(X, Y): content attention inside each node type (block-diagonal), Eq. 12 and 14."""
        vx = self.project(x, self.value, graph)
        vy = self.project(y, self.value, graph)
        if isinstance(graph, PackedGraph):
            centre, neighbour, relation, row, n_rows = self.edges("homo", graph, centres)
            per_relation = (vx.unsqueeze(1) * self.relation_vectors).reshape(-1, vx.shape[-1])  # [P*4, d]
            weighted = per_relation[centre * REL_BI + relation - 1]
            scores = F.leaky_relu((weighted * vx[neighbour]).sum(-1) * self.scale, self.leaky_slope)
            alpha = self.attn_dropout(edge_softmax(scores, row, n_rows))
            return vy.new_zeros(n_rows, vy.shape[-1]).index_add(0, row, alpha.unsqueeze(-1) * vy[neighbour])
        outputs = []
        for start, end in graph.type_slices:
            if end == start:
                continue
            v = vx[:, start:end]
            rel = graph.relation[:, start:end, start:end].long()
            weighted = v.unsqueeze(1) * self.relation_vectors[None, :, None, :]  # [B, 4, n, d]
            scores = torch.matmul(weighted, v.unsqueeze(1).transpose(-1, -2))  # [B, 4, n, n]
            scores = scores.gather(1, (rel - 1).clamp(0, REL_BI - 1).unsqueeze(1)).squeeze(1)
            scores = F.leaky_relu(scores * self.scale, self.leaky_slope)
            mask = (rel >= REL_SELF) & (rel <= REL_BI)
            alpha = self.attn_dropout(masked_softmax(scores, mask))
            outputs.append(torch.matmul(alpha, vy[:, start:end]))
        return torch.cat(outputs, dim=1)

    def hetero(self, x, y, graph, centres=None):
        """He(X, Y): key-value attention across node types, Eq. 13 and 14."""
        q = self.project(x, self.query, graph)
        k = self.project(x, self.key, graph)
        v = self.project(y, self.value, graph)
        if isinstance(graph, PackedGraph):
            centre, neighbour, _, row, n_rows = self.edges("hetero", graph, centres)
            scores = (q[centre] * k[neighbour]).sum(-1) * self.scale
            alpha = self.attn_dropout(edge_softmax(scores, row, n_rows))
            return v.new_zeros(n_rows, v.shape[-1]).index_add(0, row, alpha.unsqueeze(-1) * v[neighbour])
        scores = torch.matmul(q, k.transpose(1, 2)) * self.scale
        mask = (graph.relation == REL_SELF) | (graph.relation == REL_HETERO)
        alpha = self.attn_dropout(masked_softmax(scores, mask))
        return torch.matmul(alpha, v)

    def global_attention(self, h, graph):
        q = self.project(h, self.query, graph)
        k = self.project(h, self.key, graph)
        v = self.project(h, self.value, graph)
        if isinstance(graph, PackedGraph):  # all node pairs of a graph: dense per graph
            (q, active), (k, _), (v, _) = to_dense(q, graph), to_dense(k, graph), to_dense(v, graph)
        else:
            active = graph.active
        weights = torch.tanh(torch.matmul(q, k.transpose(1, 2)) * self.scale) * active[:, None, :]
        out = torch.matmul(self.attn_dropout(weights), v)
        return out[graph.node_batch, graph.node_slot] if isinstance(graph, PackedGraph) else out

    def gate_weights(self, first, second):
        """beta [..., 2] of the update gate (Eq. 16)."""
        if self.gate_kind == "concat":
            return torch.softmax(self.gate(torch.cat([first, second], dim=-1)), dim=-1)
        return torch.softmax(torch.cat([self.gate(first), self.gate(second)], dim=-1), dim=-1)

    def forward(self, h, graph, centres=None):
        """New states of all nodes, or (packed graphs only) of the nodes ``centres`` [R] -> [R, d]:
        the last layer only needs the readout nodes, so phase 2 and the gate run on those rows."""
        self._memo = {}
        try:
            return self._forward(h, graph, centres)
        finally:
            self._memo = None

    def _forward(self, h, graph, centres):
        mode = self.mode
        if mode == "ho":
            out = self.homo(h, h, graph, centres)
        elif mode == "he":
            out = self.hetero(h, h, graph, centres)
        elif mode == "sync":
            out = self.sync_linear(torch.cat([self.homo(h, h, graph, centres),
                                              self.hetero(h, h, graph, centres)], dim=-1))
        else:
            hohe = heho = None
            if mode in ("async", "hohe"):
                a = self.homo(h, h, graph)
                hohe = self.hetero(a, h if self.non_invasive else a, graph, centres)
            if mode in ("async", "heho"):
                e = self.hetero(h, h, graph)
                heho = self.homo(e, h if self.non_invasive else e, graph, centres)
            if mode == "async":
                beta = self.gate_weights(hohe, heho)
                out = beta[..., :1] * hohe + beta[..., 1:] * heho
            else:
                out = hohe if hohe is not None else heho
        if self.global_attn:
            g = self.global_attention(h, graph)
            g = g if centres is None else g[centres]
            gamma = torch.softmax(self.global_gate(torch.cat([out, g], dim=-1)), dim=-1)
            out = gamma[..., :1] * out + gamma[..., 1:] * g
        return out


class GraphAggregatorLayer(nn.Module):
    """Type-agnostic baselines of Table 3 on the same graph (all edges and self-loops)."""

    def __init__(self, dim, kind="gcn", n_relations=REL_HETERO, leaky_slope=0.1, attn_dropout=0.2):
        super().__init__()
        if kind not in AGGREGATORS[1:]:
            raise ConfigError(f"aggregator must be one of {AGGREGATORS}, got {kind!r}")
        self.kind, self.leaky_slope = kind, leaky_slope
        self.weight = nn.Linear((2 if kind == "sage" else 1) * dim, dim, bias=False)
        self.attn_dropout = nn.Dropout(attn_dropout)
        if kind in ("gat", "rgat"):
            rows = 1 if kind == "gat" else n_relations
            self.attn_src = nn.Parameter(torch.empty(rows, dim))  # a = [a_src; a_dst] (Eq. 10)
            self.attn_dst = nn.Parameter(torch.empty(rows, dim))
            nn.init.xavier_uniform_(self.attn_src)
            nn.init.xavier_uniform_(self.attn_dst)

    def forward(self, h, graph):
        rel = graph.relation.long()
        adj = rel > 0  # every edge of the MSGraph, self-loops included
        if self.kind == "gcn":  # Eq. 8, d(i, j) = 1 / sqrt(|N_i| |N_j|)
            deg = adj.sum(-1).clamp(min=1).float()
            norm = adj.float() / torch.sqrt(deg[:, :, None] * deg[:, None, :])
            return F.relu(torch.matmul(norm, self.weight(h)))
        if self.kind == "sage":  # mean of the neighbours (self excluded), concatenated with self
            neighbours = adj & (rel != REL_SELF)
            mean = torch.matmul(neighbours.float(), h) / neighbours.sum(-1, keepdim=True).clamp(min=1)
            return F.relu(self.weight(torch.cat([h, mean], dim=-1)))
        wh = self.weight(h)
        src = torch.matmul(wh, self.attn_src.t())  # [B, N, rows]
        dst = torch.matmul(wh, self.attn_dst.t())
        if self.kind == "gat":  # Eq. 9-11
            scores = src[:, :, :1] + dst[:, :, 0].unsqueeze(1)
        else:  # RGAT: one attention vector per relation label
            index = (rel - 1).clamp(min=0)
            scores = src.gather(2, index) + dst.transpose(1, 2).unsqueeze(1).expand(-1, rel.shape[1], -1, -1) \
                .gather(2, index.unsqueeze(2)).squeeze(2)
        alpha = masked_softmax(F.leaky_relu(scores, self.leaky_slope), adj)
        return F.relu(torch.matmul(self.attn_dropout(alpha), wh))
