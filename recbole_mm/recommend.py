"""Top-k recommendations from a trained checkpoint, for some users or for all of them.

    python -m recbole_mm.recommend --checkpoint saved/MuSTRec-X.pth --users 196,186 --k 10
    python -m recbole_mm.recommend --checkpoint saved/MuSTRec-X.pth --all --out topk.tsv

Works for every sequential model (recbole_mm's four and RecBole's own, e.g. SASRec) and for
RecBole's general models (BPR, LightGCN, ...), which score from the user id alone.

What is scored: the next item after everything we know. A sequential model's input is the user's
*whole* history (training, validation and test items, time-ordered, the last
``MAX_ITEM_LIST_LENGTH`` of them), not the training part used in evaluation, so the top-k is
what the model would recommend today.

Seen items: when the checkpoint's config has ``mask_history_items: true``, every item in the
user's history is left out of the list (``--include_seen`` keeps them); with ``false``
(RecBole's default) they are ranked like any item (``--exclude_seen`` leaves them out). PAD is
never recommended.

Output: tab-separated ``user_id rank item_id score`` plus ``title`` when the dataset's item file
(``<dataset>.item``) has a title column; user and item ids are the tokens of the data files.
``--all`` scores users in batches of ``--batch_size`` and streams the rows to ``--out`` (written
to a temp file and renamed at the end, so a killed run leaves no half file).

From Python::

    from recbole_mm.recommend import Recommender
    rec = Recommender.from_checkpoint("saved/MuSTRec-X.pth")
    rows = rec.recommend(["196", "186"], k=10)   # [{'user_id', 'rank', 'item_id', 'score', 'title'}, ...]
"""
import argparse
import os
import sys

import numpy as np
import torch

from recbole_mm.errors import RecBoleMMError

TITLE_COLUMNS = ("title", "movie_title", "name")


class RecommendError(RecBoleMMError):
    """Bad input for ``recommend``; the message names it and the fix."""


def _recbole_numpy_aliases():
    """RecBole 1.2.1 sets ``np.float`` & co. only inside ``Config.__init__``; a checkpoint's config is
    unpickled without it, so a fresh process that only loads a checkpoint needs them set first."""
    from recbole.config import Config as RecBoleConfig

    RecBoleConfig.compatibility_settings(None)


def _item_titles(config, tokens):
    """Title of every internal item id ('' when unknown), or None without a title column."""
    import pandas as pd

    path = os.path.join(config["data_path"], f"{config['dataset']}.item")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\r\n").split("\t")
    names = [h.split(":")[0] for h in header]
    column = next((c for c in TITLE_COLUMNS if c in names), None)
    if "item_id" not in names or column is None:
        return None
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3,
                        usecols=[header[names.index("item_id")], header[names.index(column)]])
    by_token = dict(zip(frame.iloc[:, 0], frame.iloc[:, 1]))
    return [by_token.get(str(t), "") for t in tokens]


class Recommender:
    """Top-k lists from a loaded model and its dataset (see the module docstring)."""

    def __init__(self, config, model, dataset):
        from recbole.utils import ModelType

        self.config, self.model, self.dataset = config, model, dataset
        self.sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
        self.uid_field, self.iid_field = dataset.uid_field, dataset.iid_field
        self.user_tokens = dataset.field2id_token[self.uid_field]
        self.item_tokens = dataset.field2id_token[self.iid_field]
        self.mask_history = bool(config["mask_history_items"]) if "mask_history_items" in config else False
        if self.sequential:
            self.max_len = config["MAX_ITEM_LIST_LENGTH"]
            self.ptr, self.items = dataset.user_sequences()
        else:
            seen = dataset.inter_matrix(form="csr")
            self.ptr, self.items = seen.indptr.astype(np.int64), seen.indices.astype(np.int64)
        self.titles = _item_titles(config, self.item_tokens)
        self.device = config["device"]
        model.eval()
        if hasattr(model, "on_eval_start"):
            model.on_eval_start()

    @classmethod
    def from_checkpoint(cls, checkpoint):
        if not os.path.isfile(checkpoint):
            raise RecommendError(f"checkpoint not found: {checkpoint}. Fix: pass a .pth file written by "
                                 "training (saved/<Model>-<date>.pth).")
        _recbole_numpy_aliases()
        from recbole_mm.quick_start import load_data_and_model

        config, model, dataset, *_ = load_data_and_model(checkpoint)
        return cls(config, model, dataset)

    # ------------------------------------------------------------------ users
    def known_users(self):
        """Internal ids of every user with at least one interaction."""
        return np.flatnonzero(np.diff(self.ptr) > 0)

    def user_ids(self, tokens):
        lookup = self.dataset.field2token_id[self.uid_field]
        unknown = [t for t in tokens if str(t) not in lookup or self.ptr[lookup[str(t)] + 1] == self.ptr[lookup[str(t)]]]
        if unknown:
            examples = ", ".join(str(self.user_tokens[u]) for u in self.known_users()[:5])
            raise RecommendError(f"user(s) {', '.join(map(str, unknown[:10]))} not in dataset "
                                 f"'{self.config['dataset']}' after its filtering (users are e.g. {examples}). "
                                 "Fix: pass user tokens as they appear in the .inter file.")
        return np.array([lookup[str(t)] for t in tokens], dtype=np.int64)

    # ------------------------------------------------------------------ scoring
    def _interaction(self, users):
        from recbole.data.interaction import Interaction

        fields = {self.uid_field: torch.as_tensor(users)}
        if self.sequential:
            seq = np.zeros((len(users), self.max_len), dtype=np.int64)
            lengths = np.zeros(len(users), dtype=np.int64)
            for row, u in enumerate(users):
                history = self.items[self.ptr[u]:self.ptr[u + 1]][-self.max_len:]
                seq[row, :len(history)] = history  # right-padded, as RecBole's sequences
                lengths[row] = len(history)
            fields[self.model.ITEM_SEQ] = torch.from_numpy(seq)
            fields[self.model.ITEM_SEQ_LEN] = torch.from_numpy(lengths)
        return Interaction(fields).to(self.device)

    @torch.no_grad()
    def scores(self, users, exclude_seen=None):
        """[len(users), n_items] scores of internal user ids; -inf for PAD and excluded items."""
        exclude_seen = self.mask_history if exclude_seen is None else exclude_seen
        scores = self.model.full_sort_predict(self._interaction(users)).view(len(users), -1).float()
        scores[:, 0] = float("-inf")
        if exclude_seen:
            for row, u in enumerate(users):
                scores[row, torch.from_numpy(self.items[self.ptr[u]:self.ptr[u + 1]])] = float("-inf")
        return scores

    def iter_topk(self, users, k=10, exclude_seen=None, batch_size=256):
        """Yield ``(user id, [(item id, score), ...])`` per user, best first, scoring
        ``batch_size`` users at a time (memory: batch_size x n_items floats)."""
        for start in range(0, len(users), batch_size):
            batch = users[start:start + batch_size]
            scores = self.scores(batch, exclude_seen)
            values, indices = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            for u, vals, idx in zip(batch.tolist(), values.cpu().tolist(), indices.cpu().tolist()):
                yield u, [(i, v) for i, v in zip(idx, vals) if v != float("-inf")]

    def rows(self, users, k=10, exclude_seen=None, batch_size=256):
        """Dict rows (user_id, rank, item_id, score[, title]) with external tokens."""
        for u, ranked in self.iter_topk(users, k, exclude_seen, batch_size):
            for rank, (i, score) in enumerate(ranked, start=1):
                row = {"user_id": str(self.user_tokens[u]), "rank": rank, "item_id": str(self.item_tokens[i]),
                       "score": score}
                if self.titles is not None:
                    row["title"] = self.titles[i]
                yield row

    def recommend(self, users=None, k=10, include_seen=None, batch_size=256):
        """Top-k rows for user tokens (``None``: every user). ``include_seen``: None follows the
        checkpoint's ``mask_history_items``; True ranks seen items; False leaves them out."""
        exclude = None if include_seen is None else not include_seen
        ids = self.known_users() if users is None else self.user_ids(list(users))
        return list(self.rows(ids, k, exclude, batch_size))


def format_row(row):
    text = [row["user_id"], str(row["rank"]), row["item_id"], f"{row['score']:.6g}"]
    if "title" in row:
        text.append(" ".join(str(row["title"]).split()))
    return "\t".join(text) + "\n"


def write_rows(handle, recommender, rows):
    handle.write("\t".join(["user_id", "rank", "item_id", "score"]
                           + (["title"] if recommender.titles is not None else [])) + "\n")
    for row in rows:
        handle.write(format_row(row))


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.recommend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model file written by training (saved/*.pth)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="comma-separated user tokens (as in the .inter file)")
    who.add_argument("--all", action="store_true", help="every user, streamed in batches")
    parser.add_argument("--k", type=int, default=10, help="list length (default 10)")
    seen = parser.add_mutually_exclusive_group()
    seen.add_argument("--include_seen", "--include-seen", action="store_true",
                      help="rank items the user already interacted with")
    seen.add_argument("--exclude_seen", "--exclude-seen", action="store_true",
                      help="leave them out (the default when the checkpoint has mask_history_items: true)")
    parser.add_argument("--out", default=None, help="output TSV file (default: standard output)")
    parser.add_argument("--batch_size", "--batch-size", type=int, default=256, help="users scored at once")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from recbole_mm.cli import fail

    if args.k <= 0 or args.batch_size <= 0:
        return fail("--k and --batch_size must be positive integers.")
    include = True if args.include_seen else (False if args.exclude_seen else None)
    try:
        recommender = Recommender.from_checkpoint(args.checkpoint)
        users = recommender.known_users() if args.all else recommender.user_ids(
            [t.strip() for t in args.users.split(",") if t.strip()])
        rows = recommender.rows(users, args.k, None if include is None else not include, args.batch_size)
        if args.out:
            from recbole_mm.utils import atomic_write

            atomic_write(args.out, lambda f: write_rows(f, recommender, rows), binary=False)
            print(f"wrote top-{args.k} lists of {len(users)} users to {args.out}", file=sys.stderr)
        else:
            write_rows(sys.stdout, recommender, rows)
    except RecBoleMMError as err:
        return fail(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
