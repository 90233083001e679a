"""Leakage checks and training-history lookups shared by graph-based models.

Keys ``u * n_items + i`` of a user's training interactions, sorted once, answer "is (u, i) a
training interaction?" and "which items did u interact with in training?" on any device with
``searchsorted``, without a dense user x item matrix. The two checks assert that a graph holds
training items only and that evaluation inputs continue the training sequences.
"""
import numpy as np
import torch


def history_keys(inter_csr, n_items):
    """Sorted int64 keys ``u * n_items + i`` of the training interactions."""
    coo = inter_csr.tocoo()
    keys = np.unique(coo.row.astype(np.int64) * n_items + coo.col.astype(np.int64))
    return torch.from_numpy(keys)


def history_entries(users, sorted_keys, n_items):
    """``(row, item)`` index pairs of the training items of each user in ``users``."""
    starts = torch.searchsorted(sorted_keys, users * n_items)
    counts = torch.searchsorted(sorted_keys, (users + 1) * n_items) - starts
    rows = torch.repeat_interleave(torch.arange(users.numel(), device=users.device), counts)
    first = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
    flat = first + torch.arange(int(counts.sum()), device=users.device)
    return rows, sorted_keys[flat] % n_items


def is_member(keys, sorted_keys):
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, keys).clamp_max(sorted_keys.numel() - 1)
    return sorted_keys[pos] == keys


def check_training_graph(inter_csr, dataset):
    """Leakage check (D6 in docs/models/MuSTRec.md): graph edges of each user are exactly its training-sequence items,
    and every training sample (history + target) uses only those items."""
    sequences = dataset.train_sequences()
    for user in range(inter_csr.shape[0]):
        edges = set(inter_csr.indices[inter_csr.indptr[user]:inter_csr.indptr[user + 1]].tolist())
        seq = set(np.asarray(sequences[user]).tolist()) if user < len(sequences) else set()
        if edges != seq:
            extra = sorted(edges - seq)[:5]
            raise ValueError(f"leakage_check: user {user} has graph edges {extra} outside its "
                             f"training sequence (or misses some); the graph must hold training items only")
    inter = dataset.inter_feat
    uid, seq_f, len_f, iid = (dataset.uid_field, dataset.item_id_list_field,
                              dataset.item_list_length_field, dataset.iid_field)
    if seq_f not in inter or len(inter) == 0:
        return
    keys = history_keys(inter_csr, inter_csr.shape[1])
    n_items = inter_csr.shape[1]
    users, items = inter[uid].long(), inter[seq_f].long()
    used = torch.arange(items.shape[1]).unsqueeze(0) < inter[len_f].unsqueeze(1)
    row_keys = torch.cat([(users.unsqueeze(1) * n_items + items)[used], users * n_items + inter[iid].long()])
    if not bool(is_member(row_keys, keys).all()):
        raise ValueError("leakage_check: a training sample uses an item that is not a training "
                         "edge of its user (split and sequences disagree)")


def check_eval_histories(dataset, eval_dataset, max_len):
    """Leakage check at fit start: each evaluation row's input is the tail of the user's training
    sequence (valid) or training sequence + validation target (test), so the graph holds exactly
    the items strictly before the validation target."""
    sequences = dataset.train_sequences()
    inter = eval_dataset.inter_feat
    seq_f = dataset.item_id_list_field
    users, lengths = inter[dataset.uid_field].tolist(), inter[dataset.item_list_length_field].tolist()
    histories = inter[seq_f].tolist()
    for user, length, history in zip(users, lengths, histories):
        train = list(np.asarray(sequences[user]).tolist())
        if history[:length] != train[-length:] or (length < max_len and len(train) != length):
            raise ValueError(f"leakage_check: user {user}'s validation input is not the end of "
                             "its training sequence; split, sequences and graph disagree")
