"""Full-sort scoring in chunks of rows: cache-sized chunks (MuSTRec, MDSRec) and buckets of
similar length (MDSRec).

Scores of one row never depend on another row at evaluation, so any split of a batch gives the
same scores. Chunks of a few hundred rows keep a head's activations (rows x L x inner) in cache:
MuSTRec's evaluation ran 1.5x faster in chunks of 256 rows than in RecBole's batches of 4,096
(docs/benchmarks/eval.md).

Buckets of similar length:
With right padding, a causal mask and keys at padding masked out, a Transformer's output at the
valid positions does not depend on the trailing PAD columns: cutting a batch to its longest
sequence gives the same scores up to float rounding. Sorting the rows by length first and
scoring them in buckets cuts most columns on data where most sequences are short (a Baby-scale
batch holds sequences of 1 to 50 items, most under 10). Evaluation only: in training the shape
of every dropout draw would change, and with it the random stream.
"""
import torch

EVAL_CHUNK_ROWS = 256


def score_in_chunks(score_rows, n_rows, chunk_rows=EVAL_CHUNK_ROWS):
    """``score_rows(row_slice) -> [rows, n]`` over consecutive chunks of ``n_rows`` rows, concatenated."""
    return torch.cat([score_rows(slice(start, min(start + chunk_rows, n_rows)))
                      for start in range(0, max(n_rows, 1), chunk_rows)])


def trim_padding(item_seq, item_seq_len):
    """``item_seq`` without the PAD columns after its longest row."""
    longest = int(item_seq_len.max()) if item_seq_len.numel() else 0
    return item_seq[:, :max(longest, 1)]


def score_by_length(score_rows, item_seq, item_seq_len, bucket_size=EVAL_CHUNK_ROWS):
    """``score_rows(item_seq_part, item_seq_len_part) -> [rows, n]`` applied to buckets of rows of
    similar length (each trimmed to its longest row); the rows come back in the input order."""
    order = torch.argsort(item_seq_len, stable=True)
    parts = []
    for start in range(0, len(order), bucket_size):
        rows = order[start:start + bucket_size]
        lengths = item_seq_len[rows]
        parts.append(score_rows(trim_padding(item_seq[rows], lengths), lengths))
    scores = torch.cat(parts) if parts else item_seq.new_zeros((0, 0), dtype=torch.float)
    return scores[torch.argsort(order)]
