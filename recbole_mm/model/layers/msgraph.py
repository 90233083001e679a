"""Batched construction of MMSR's Modality-enriched Sequence Graphs (MSGraphs).

Hu et al., "Adaptive Multi-Modalities Fusion in Sequential Recommendation Systems", CIKM 2023, §4.1.

One graph per sequence, built for the whole batch at once with tensor operations on the
device of ``item_seq`` (no Python loop over the batch).

Nodes (slots).  A graph of a batch has ``N = Lb + sum_m S_m`` slots, where ``Lb`` is the
longest sequence in the batch.  Slots are grouped by node type, so the type of a slot is
static: ``[0, Lb)`` item nodes (type 0), then ``S_1`` code slots of modality 1 (type 1), ...
- item slot ``t`` is active iff position ``t`` holds the first occurrence of its item
  (repeated items share one node);
- ``layout='identity'``: ``S_m = n_codes[m]`` and code ``c`` lives in slot ``offset_m + c``;
- ``layout='compact'``: ``S_m`` = the largest number of distinct codes of modality ``m`` in
  one sequence of the batch; the codes of a sequence take the first slots in ascending id order.
Both layouts describe the same graphs (the model is permutation-equivariant and masks
inactive slots), the compact one is smaller.

Relations ``R[b, i, j]`` (label of neighbour ``j`` as seen from centre ``i``):
``0`` no edge, ``1`` self-loop (active nodes), ``2`` transition-out (j directly follows i),
``3`` transition-in (i directly follows j), ``4`` bidirectional (both occur), ``5`` heterogeneous
(item-code or code-code of different modalities at the same position).
Transitions: for consecutive positions ``t, t+1`` with different items, item(t) -> item(t+1)
and every code pair ``codes_m(t) x codes_m(t+1)`` with different codes; a step between two
equal items is skipped entirely, codes included (the official code's behaviour, kept).
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from recbole_mm.errors import ConfigError

REL_NONE, REL_SELF, REL_OUT, REL_IN, REL_BI, REL_HETERO = 0, 1, 2, 3, 4, 5


class MSGraphBatch(NamedTuple):
    relation: torch.Tensor       # int8 [B, N, N], labels REL_*
    active: torch.Tensor         # bool [B, N]
    node_ids: torch.Tensor       # long [B, N]: item id (type 0) or code id (type m >= 1); 0 when inactive
    type_slices: List[Tuple[int, int]]  # [start, end) of each node type's slots
    positions: torch.Tensor      # float [B, N, Lb]: 1 where node occurs at position t
    readout: torch.Tensor        # long [B]: slot of the last item of each sequence

    @property
    def node_type(self) -> torch.Tensor:
        """long [N]: node type of every slot (0 item, m for modality m)."""
        sizes = [end - start for start, end in self.type_slices]
        return torch.repeat_interleave(
            torch.arange(len(sizes), device=self.relation.device),
            torch.tensor(sizes, device=self.relation.device),
        )


def _compact_code_slots(codes: torch.Tensor, valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rank of each valid code among the distinct codes of its row.

    codes, valid: [B, X].  Returns ``local`` [B, X] (rank, garbage where invalid) and
    ``slot2code`` [B, S] (code id per rank, 0 where unused), S = max distinct codes per row.
    """
    big = torch.iinfo(torch.long).max
    flat = torch.where(valid, codes, torch.full_like(codes, big))
    sorted_codes, order = torch.sort(flat, dim=1)
    new = torch.ones_like(sorted_codes, dtype=torch.bool)
    new[:, 1:] = sorted_codes[:, 1:] != sorted_codes[:, :-1]
    new &= sorted_codes != big
    rank_sorted = torch.cumsum(new.long(), dim=1) - 1
    local = torch.empty_like(codes).scatter_(1, order, rank_sorted)
    n_slots = int(new.sum(1).max().item()) if codes.numel() else 0
    slot2code = torch.zeros(codes.shape[0], n_slots + 1, dtype=torch.long, device=codes.device)
    target = torch.where(new, rank_sorted, torch.full_like(rank_sorted, n_slots))
    slot2code.scatter_(1, target, torch.where(new, sorted_codes, torch.zeros_like(sorted_codes)))
    return local, slot2code[:, :n_slots]


def _mark(buffer: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, ok: torch.Tensor, width: int):
    """Set buffer[b, src*width + dst] = True where ok (others go to the trash cell)."""
    trash = width * width - 1
    index = torch.where(ok, src * width + dst, torch.full_like(src, trash))
    buffer.scatter_(1, index.reshape(index.shape[0], -1), True)


def build_msgraph(
    item_seq: torch.Tensor,
    item_seq_len: torch.Tensor,
    item_codes: Sequence[torch.Tensor],
    n_codes: Sequence[int],
    layout: str = "compact",
    code_keep: Optional[Sequence[Optional[torch.Tensor]]] = None,
) -> MSGraphBatch:
    """Build the MSGraphs of a batch.

    Args:
        item_seq: long [B, L], right-padded with 0.
        item_seq_len: long [B], true lengths (>= 1).
        item_codes: per modality, long [n_items, k] code ids, -1 meaning "no code"
            (PAD row and items whose feature is missing or hidden).  With MMSR's ``code_num: 0``
            (Fig. 5, no codes) an item's own id is its single code: one node per item modality.
        n_codes: per modality, the number of codes c (used by the identity layout).
        layout: 'compact' or 'identity'.
        code_keep: optional per modality bool [B, L]; False drops that modality's codes at that
            position (missing modality per position).
    """
    if layout not in ("compact", "identity"):
        raise ConfigError(f"graph_layout must be 'compact' or 'identity', got {layout!r}")
    device = item_seq.device
    batch = item_seq.shape[0]
    lb = max(int(item_seq_len.max().item()), 1)
    seq = item_seq[:, :lb]
    arange = torch.arange(lb, device=device)
    valid = arange[None, :] < item_seq_len[:, None]

    # items: slot of position t = first position holding the same item
    seq_v = torch.where(valid, seq, torch.full_like(seq, -1))
    same = (seq_v[:, :, None] == seq_v[:, None, :]) & valid[:, None, :]
    first = same.to(torch.uint8).argmax(dim=2)

    # codes: per modality a local slot for each (position, code)
    code_local, code_valid, slot_to_code, sizes = [], [], [], [lb]
    for m, table in enumerate(item_codes):
        codes = table[seq]  # [B, Lb, k]
        ok = (codes >= 0) & valid[:, :, None]
        if code_keep is not None and code_keep[m] is not None:
            ok &= code_keep[m][:, :lb, None]
        if layout == "identity":
            local, size = codes, int(n_codes[m])
            slot2code = torch.arange(size, device=device).expand(batch, size)
        else:
            k = codes.shape[2]
            local, slot2code = _compact_code_slots(codes.reshape(batch, -1), ok.reshape(batch, -1))
            local, size = local.reshape(batch, lb, k), slot2code.shape[1]
        code_local.append(local)
        code_valid.append(ok)
        slot_to_code.append(slot2code)
        sizes.append(size)

    offsets = torch.tensor([0] + sizes, device=device).cumsum(0).tolist()
    n = offsets[-1]
    trash = n
    width = n + 1
    type_slices = [(offsets[i], offsets[i + 1]) for i in range(len(sizes))]
    item_slot = torch.where(valid, first, torch.full_like(first, trash))
    code_slot = [
        torch.where(ok, offsets[m + 1] + local, torch.full_like(local, trash))
        for m, (local, ok) in enumerate(zip(code_local, code_valid))
    ]

    # homogeneous transitions (directed pairs D)
    transitions = torch.zeros(batch, width * width, dtype=torch.bool, device=device)
    step = valid[:, 1:] & (seq[:, :-1] != seq[:, 1:])
    _mark(transitions, item_slot[:, :-1], item_slot[:, 1:], step, width)
    for cs in code_slot:
        src, dst = cs[:, :-1, :, None], cs[:, 1:, None, :]
        ok = step[:, :, None, None] & (src != trash) & (dst != trash) & (src != dst)
        src, dst = torch.broadcast_tensors(src, dst)
        _mark(transitions, src, dst, ok, width)

    # heterogeneous links at each position: item-code and code-code of different modalities
    hetero = torch.zeros(batch, width * width, dtype=torch.bool, device=device)
    for m, cs in enumerate(code_slot):
        item = item_slot[:, :, None].expand_as(cs)
        ok = (item != trash) & (cs != trash)
        _mark(hetero, item, cs, ok, width)
        _mark(hetero, cs, item, ok, width)
        for other in code_slot[m + 1:]:
            a, b = torch.broadcast_tensors(cs[:, :, :, None], other[:, :, None, :])
            ok = (a != trash) & (b != trash)
            _mark(hetero, a, b, ok, width)
            _mark(hetero, b, a, ok, width)

    transitions = transitions.view(batch, width, width)[:, :n, :n]
    hetero = hetero.view(batch, width, width)[:, :n, :n]
    reverse = transitions.transpose(1, 2)
    relation = torch.zeros(batch, n, n, dtype=torch.int8, device=device)
    relation[transitions & ~reverse] = REL_OUT
    relation[reverse & ~transitions] = REL_IN
    relation[transitions & reverse] = REL_BI
    relation[hetero] = REL_HETERO

    # positions and activity
    positions = torch.zeros(batch, width * lb, device=device)
    pos_index = [item_slot * lb + arange] + [cs * lb + arange[None, :, None] for cs in code_slot]
    for index in pos_index:
        positions.scatter_(1, index.reshape(batch, -1), 1.0)
    positions = positions.view(batch, width, lb)[:, :n]
    active = positions.sum(-1) > 0
    diagonal = torch.arange(n, device=device)
    relation[:, diagonal, diagonal] = torch.where(
        active, torch.tensor(REL_SELF, dtype=torch.int8, device=device), relation[:, diagonal, diagonal]
    )

    node_ids = torch.cat([seq] + slot_to_code, dim=1)
    node_ids = torch.where(active, node_ids, torch.zeros_like(node_ids))
    readout = item_slot.gather(1, (item_seq_len - 1).clamp(min=0)[:, None]).squeeze(1)
    return MSGraphBatch(relation, active, node_ids, type_slices, positions, readout)


class PackedGraph(NamedTuple):
    """The active nodes of a batch of MSGraphs in one flat array, with edge lists.

    Nodes are ordered type-major (all item nodes of the batch, then the codes of modality 1, ...),
    so ``type_slices`` are ranges of the flat array and per-type projections are slices.
    Edges ``(centre, neighbour)`` index the flat array; softmax runs over the edges of a centre.
    """
    type_slices: List[Tuple[int, int]]
    node_batch: torch.Tensor      # long [P]: graph of each node
    node_slot: torch.Tensor       # long [P]: slot of each node in the dense layout
    node_ids: torch.Tensor        # long [P]: item / code id
    positions: torch.Tensor       # float [P, Lb]
    homo_edges: torch.Tensor      # long [2, E_ho] (centre, neighbour), self-loops included
    homo_relation: torch.Tensor   # long [E_ho]: REL_SELF .. REL_BI
    hetero_edges: torch.Tensor    # long [2, E_he], self-loops included
    readout: torch.Tensor         # long [B]: flat index of each sequence's last item
    batch_size: int
    n_slots: int


def pack_graph(graph: MSGraphBatch) -> PackedGraph:
    """Flatten the active nodes of ``graph`` (type-major) and list its edges."""
    batch, n = graph.active.shape
    device = graph.active.device
    batches, slots, type_slices, count = [], [], [], 0
    for start, end in graph.type_slices:
        b, i = torch.nonzero(graph.active[:, start:end], as_tuple=True)
        batches.append(b)
        slots.append(i + start)
        type_slices.append((count, count + len(b)))
        count += len(b)
    node_batch, node_slot = torch.cat(batches), torch.cat(slots)
    flat = torch.full((batch, n), -1, dtype=torch.long, device=device)
    flat[node_batch, node_slot] = torch.arange(count, device=device)
    rel = graph.relation
    b, i, j = torch.nonzero((rel >= REL_SELF) & (rel <= REL_BI), as_tuple=True)
    homo_edges = torch.stack([flat[b, i], flat[b, j]])
    homo_relation = rel[b, i, j].long()
    b, i, j = torch.nonzero((rel == REL_SELF) | (rel == REL_HETERO), as_tuple=True)
    hetero_edges = torch.stack([flat[b, i], flat[b, j]])
    readout = flat[torch.arange(batch, device=device), graph.readout]
    return PackedGraph(type_slices, node_batch, node_slot, graph.node_ids[node_batch, node_slot],
                       graph.positions[node_batch, node_slot], homo_edges, homo_relation, hetero_edges,
                       readout, batch, n)
