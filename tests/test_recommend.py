"""``recbole_mm.recommend``: top-k lists from a checkpoint equal the model's own full-sort scores
on each user's whole history, for the four models and RecBole's SASRec, from Python and the CLI."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from conftest import REPO_ROOT, tiny_run_config, write_tiny_dataset
from recbole_mm.quick_start import run_recbole_mm
from recbole_mm.recommend import RecommendError, Recommender
from recbole_mm.recommend import main as recommend_main

TINY_BERT = dict(model_type="bert", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=32, vocab_size=100)
MODELS = {  # tiny settings; embedding_size and hidden_size agree for every model
    "SASRec": dict(hidden_size=8, inner_size=16, n_layers=1, n_heads=1),
    "MuSTRec": dict(embedding_size=8, hidden_size=8, inner_size=16, knn_k=3),
    "MMSR": dict(embedding_size=16, hidden_size=16, code_num=4, code_reduce="pca"),
    "MDSRec": dict(embedding_size=16, hidden_size=16, inner_size=32, n_centers=4, knn_k=3),
    "IDAgnosticMMSR": dict(text_encoder_path=None, text_encoder_config=TINY_BERT, allow_random_init=True,
                           embedding_size=16, hidden_size=16, inner_size=32, fusion_heads=2, text_max_len=8,
                           n_finetune_blocks_text=1, train_batch_size=16, item_encode_batch=16,
                           cache_dtype="float32"),
}
WORDS = ["red", "blue", "glue", "glove", "pipette", "magnet", "steel", "tape"]


def write_item_file(info):
    """Item titles (also the raw text IDAgnosticMMSR reads)."""
    rng = np.random.default_rng(1)
    with open(os.path.join(info["folder"], f"{info['name']}.item"), "w") as f:
        f.write("item_id:token\ttitle:token_seq\n")
        for item in range(40):
            f.write(f"{item}\t{' '.join(rng.choice(WORDS, 3))} {item}\n")


def train(tmp_path, model, **overrides):
    info = write_tiny_dataset(str(tmp_path / "data"))
    write_item_file(info)
    config = tiny_run_config(tmp_path, data_path=info["data_path"], multimodal_features=info["features"],
                             item_text_file="tiny.item", eval_step=1, **{**MODELS[model], **overrides})
    result = run_recbole_mm(model, "tiny", config_dict=config, saved=True)
    return result["checkpoint"], info


def reference_topk(rec, info, user, k, exclude_seen):
    """The model's own full_sort_predict on the user's whole sequence, read from the raw file."""
    items = rec.dataset.field2token_id[rec.dataset.iid_field]
    history = [items[str(t)] for t in info["sequences"][int(user)]]
    length = min(len(history), rec.max_len)
    seq = torch.zeros(1, rec.max_len, dtype=torch.long)
    seq[0, :length] = torch.tensor(history[-length:])
    interaction = Interaction({rec.uid_field: torch.tensor([rec.dataset.field2token_id[rec.uid_field][user]]),
                               rec.model.ITEM_SEQ: seq, rec.model.ITEM_SEQ_LEN: torch.tensor([length])})
    with torch.no_grad():
        scores = rec.model.full_sort_predict(interaction).view(-1).clone()
    scores[0] = float("-inf")
    if exclude_seen:
        scores[history] = float("-inf")
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    tokens = rec.dataset.field2id_token[rec.dataset.iid_field]
    return [str(tokens[i]) for i in order.tolist()], scores[order].tolist()


@pytest.mark.parametrize("model", list(MODELS))
def test_topk_equals_full_sort_predict_on_the_whole_history(tmp_path, in_tmp, model):
    checkpoint, info = train(tmp_path, model, mask_history_items=True)
    rec = Recommender.from_checkpoint(checkpoint)
    users = ["0", "5", "17"]
    rows = rec.recommend(users, k=5)
    for user in users:
        mine = [r for r in rows if r["user_id"] == user]
        expected_items, expected_scores = reference_topk(rec, info, user, 5, exclude_seen=True)
        assert [r["item_id"] for r in mine] == expected_items
        assert np.allclose([r["score"] for r in mine], expected_scores, atol=1e-5)
        assert [r["rank"] for r in mine] == [1, 2, 3, 4, 5]
        seen = {str(t) for t in info["sequences"][int(user)]}
        assert not seen & set(expected_items)  # mask_history_items: true removes the history
        assert all(r["title"].endswith(f" {r['item_id']}") for r in mine)  # titles from tiny.item


def test_seen_items_follow_the_switches(tmp_path, in_tmp):
    checkpoint, info = train(tmp_path, "SASRec", mask_history_items=False)
    rec = Recommender.from_checkpoint(checkpoint)
    n_items = len(rec.item_tokens) - 1
    default = rec.recommend(["3"], k=n_items)  # mask_history_items: false ranks seen items
    assert [r["item_id"] for r in default] == reference_topk(rec, info, "3", n_items, False)[0]
    excluded = rec.recommend(["3"], k=n_items, include_seen=False)
    seen = {str(t) for t in info["sequences"][3]}
    assert {r["item_id"] for r in excluded} == {r["item_id"] for r in default} - seen
    assert len(excluded) == n_items - len(seen)  # excluded items are dropped, not listed last
    with pytest.raises(RecommendError, match="not in dataset"):
        rec.recommend(["nobody"])


def test_cli_users_and_all_in_a_fresh_process(tmp_path, in_tmp, capsys):
    checkpoint, info = train(tmp_path, "SASRec", mask_history_items=True)
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    out = tmp_path / "topk.tsv"
    result = subprocess.run([sys.executable, "-m", "recbole_mm.recommend", "--checkpoint", checkpoint,
                             "--all", "--out", str(out), "--k", "3", "--batch_size", "7"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "user_id\trank\titem_id\tscore\ttitle"
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == 3 * len(info["sequences"]) and len({r[0] for r in rows}) == len(info["sequences"])
    rec = Recommender.from_checkpoint(checkpoint)
    expected = rec.recommend(["0", "29"], k=3)
    assert [(r[0], r[2]) for r in rows if r[0] in ("0", "29")] == [(r["user_id"], r["item_id"]) for r in expected]
    capsys.readouterr()
    assert recommend_main(["--checkpoint", checkpoint, "--users", "0,29", "--k", "3"]) == 0
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r[0], r[2]) for r in printed] == [(r["user_id"], r["item_id"]) for r in expected]
    assert recommend_main(["--checkpoint", checkpoint, "--users", "0,nobody"]) == 2
    assert recommend_main(["--checkpoint", str(tmp_path / "none.pth"), "--all"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err) and "nobody" in err[0]
