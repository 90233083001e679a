"""Fast evaluation paths give what the slow, obviously correct paths give (docs/benchmarks/eval.md).

Each speed-up is compared with the code it replaced, kept here as the reference:
- history masking: the per-row loop over each user's sequence;
- RecBole's collector (dense positive matrix) against :class:`recbole_mm.trainer.TopKCollector`;
- the frequency filter as an FFT pair against the low-pass matrix;
- the frequency-attention encoder on all positions against ``last_only``;
- MDSRec scoring the padded batch against scoring in length buckets;
- whole evaluations (MuSTRec, MMSR, MDSRec, SASRec): identical metrics with every reference path.
"""
import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.evaluator import Collector

from conftest import tiny_run_config
from recbole_mm import registry
from recbole_mm.config import Config
from recbole_mm.data.dataset import TARGET_POSITION_FIELD, MultimodalSequentialDataset
from recbole_mm.model import mdsrec as mdsrec_module
from recbole_mm.model.layers import dropout
from recbole_mm.model.layers.dropout import keep_mask
from recbole_mm.model.layers.frequency_attention import FrequencyAttentionEncoder, FrequencyFilter, attention_mask
from recbole_mm.quick_start import create_dataset
from recbole_mm.trainer import TopKCollector


def reference_history_before(dataset, users, positions):
    """The per-row loop the vectorised ``history_before`` replaced."""
    rows, cols = [], []
    for r, (u, p) in enumerate(zip(users.tolist(), positions.tolist())):
        start = dataset._user_sequence_ptr[u]
        history = dataset._user_sequence_items[start:start + p]
        target = dataset._user_sequence_items[start + p]
        history = np.unique(history[history != target])
        rows.append(np.full(len(history), r))
        cols.append(history)
    return torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols))


def write_repeating_dataset(root, n_users=40, n_items=15, seed=0):
    """Sequences of 3-20 items drawn with replacement (repeats, targets seen before)."""
    rng = np.random.default_rng(seed)
    folder = root / "rep"
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    t = 0
    for user in range(n_users):
        for item in rng.integers(0, n_items, size=int(rng.integers(3, 21))):
            lines.append(f"{user}\t{item}\t{t}")
            t += 1
    (folder / "rep.inter").write_text("\n".join(lines) + "\n")
    features = {}
    for name, dim in (("image", 6), ("text", 5)):
        np.save(folder / f"{name}_feat.npy", rng.normal(size=(n_items, dim)).astype(np.float32))
        features[name] = {"file": f"{name}_feat.npy"}
    return features


@pytest.fixture
def repeating(tmp_path, in_tmp):
    features = write_repeating_dataset(tmp_path / "data")

    def load(model="SASRec", **overrides):
        settings = tiny_run_config(tmp_path, data_path=str(tmp_path / "data"), multimodal_features=features,
                                   mask_history_items=True, MAX_ITEM_LIST_LENGTH=6, eval_batch_size=16,
                                   graph_cache_dir=str(tmp_path / "graphs"), topk=[3, 5], valid_metric="NDCG@5")
        settings.update(overrides)
        config = Config(model=model, dataset="rep", config_dict=settings, parse_argv=False)
        dataset = create_dataset(config)
        return config, dataset, data_preparation(config, dataset)
    return load


def test_history_before_equals_the_per_row_loop(repeating):
    _, dataset, splits = repeating()
    checked = 0
    for loader in splits:
        split = loader._dataset
        users, positions = split.inter_feat["user_id"], split.inter_feat[TARGET_POSITION_FIELD]
        fast = split.history_before(users, positions)
        slow = reference_history_before(split, users, positions)
        assert all(torch.equal(a, b) for a, b in zip(fast, slow))
        checked += len(fast[0])
    assert checked > 100  # repeats and long histories were exercised


def test_topk_collector_record_equals_recboles(repeating):
    config, _, _ = repeating(metrics=["Hit", "NDCG", "MRR", "Recall", "Precision"])
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        scores = torch.randint(0, 6, (9, 12), generator=generator).float()  # many ties
        positive_u = torch.tensor([0, 0, 1, 2, 2, 2, 4, 5, 5, 8, 8])  # rows 3, 6, 7 have none
        positive_i = torch.tensor([1, 1, 3, 0, 4, 11, 7, 2, 9, 5, 6])  # (0, 1) twice
        ours, recboles = TopKCollector(config), Collector(config)
        for collector in (ours, recboles):
            collector.eval_batch_collect(scores, None, positive_u, positive_i)
            collector.eval_batch_collect(scores.flip(1), None, positive_u, positive_i)
        ours, recboles = ours.get_data_struct(), recboles.get_data_struct()
        assert ours["rec.topk"].dtype == recboles["rec.topk"].dtype
        assert torch.equal(ours["rec.topk"], recboles["rec.topk"])


@pytest.mark.parametrize("length,c", [(50, 3), (8, 3), (7, 5), (10, 20)])
def test_low_pass_matrix_equals_the_fft_pair(length, c):
    layer = FrequencyFilter(hidden_size=4, c=c, dropout=0.0, layer_norm_eps=1e-12)
    x = torch.randn(3, length, 4)
    spectrum = torch.fft.rfft(x, dim=1, norm="ortho")
    spectrum[:, layer.kept_bins:] = 0
    expected = torch.fft.irfft(spectrum, n=length, dim=1, norm="ortho")
    low, high = layer.split(x)
    torch.testing.assert_close(low, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low + high, x)
    low_last, high_last = layer.split(x, last_only=True)
    torch.testing.assert_close(low_last, low[:, -1:], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(high_last, high[:, -1:], atol=1e-6, rtol=1e-6)


def left_padded_mask(lengths, window):
    """The additive mask of left-padded rows of the given lengths (length 0: no valid key)."""
    lengths = torch.tensor(lengths)
    return attention_mask(torch.arange(window)[None, :] >= (window - lengths)[:, None])


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("lengths", [
    [1, 2, 3, 2, 1],  # few keys: the last query runs on its allowed keys alone
    [7, 6, 7, 5, 7],  # most keys allowed: the masked path
    [1, 2, 0, 3, 1],  # a row with no allowed key: the masked path (uniform over the raw scores)
])
def test_last_only_equals_the_full_encoder(train, lengths):
    """Without dropout both must give the same output and gradients; with dropout the masks differ
    by design (tests/test_step_speed.py checks the ragged attention with dropout)."""
    torch.manual_seed(0)
    encoder = FrequencyAttentionEncoder(n_layers=2, hidden_size=8, n_heads=2, inner_size=16,
                                        hidden_dropout=0.0, attn_dropout=0.0).train(train)
    x = torch.randn(5, 7, 8, requires_grad=True)
    mask = left_padded_mask(lengths, 7)
    full = encoder(x, mask)[:, -1]
    last = encoder(x, mask, last_only=True)
    torch.testing.assert_close(last, full, atol=1e-6, rtol=1e-6)
    grads_full = torch.autograd.grad(full.square().sum(), [x, *encoder.parameters()])
    grads_last = torch.autograd.grad(last.square().sum(), [x, *encoder.parameters()])
    for a, b in zip(grads_full, grads_last):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert encoder.blocks[1].feed_forward.dense_in.weight.grad is None  # grad() leaves .grad alone


def full_length_scores(model, interaction):
    """MDSRec's scores of the whole padded batch, without trimming or buckets."""
    return model.fuse_scores(model.channel_logits(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]))


def test_mdsrec_length_buckets_give_the_padded_batch_scores(repeating, monkeypatch):
    _, _, (train, _, test) = repeating("MDSRec", embedding_size=8, inner_size=16, n_centers=3, knn_k=3)
    config = train.config
    model = registry.get_model("MDSRec")(config, train.dataset).eval()
    interaction = next(iter(test))[0]
    lengths = interaction[model.ITEM_SEQ_LEN]
    assert len(set(lengths.tolist())) > 2 and int(lengths.max()) < interaction[model.ITEM_SEQ].shape[1] + 1
    with torch.no_grad():
        fast = model.full_sort_predict(interaction)
        monkeypatch.setattr(mdsrec_module, "trim_padding", lambda seq, lengths: seq)
        slow = full_length_scores(model, interaction)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def reference_paths(monkeypatch, model):
    """Every replaced slow path: RecBole's collector, the history loop, full-length heads."""
    monkeypatch.setattr(MultimodalSequentialDataset, "history_before",
                        lambda self, users, positions: reference_history_before(self, users, positions))
    monkeypatch.setattr(mdsrec_module, "trim_padding", lambda seq, lengths: seq)
    if hasattr(model, "fuse_scores"):  # MDSRec: the padded batch at once
        monkeypatch.setattr(model, "full_sort_predict", lambda interaction: full_length_scores(model, interaction))
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, FrequencyAttentionEncoder):  # MuSTRec: every position, then the last row
        full = encoder.forward
        monkeypatch.setattr(encoder, "forward", lambda x, mask, last_only=False: full(x, mask)[:, -1]
                            if last_only else full(x, mask))


@pytest.mark.parametrize("model_name,overrides", [
    ("MuSTRec", {"embedding_size": 8, "inner_size": 16, "knn_k": 3}),
    ("MDSRec", {"embedding_size": 8, "inner_size": 16, "n_centers": 3, "knn_k": 3}),
    ("MMSR", {"embedding_size": 8, "code_num": 3, "code_reduce": "pca"}),
    ("SASRec", {"hidden_size": 8, "inner_size": 16, "n_layers": 1}),
])
def test_whole_evaluation_metrics_identical_to_the_reference_path(repeating, monkeypatch, model_name, overrides):
    config, _, (train, valid, test) = repeating(model_name, **overrides)
    model = registry.get_model(model_name)(config, train.dataset)
    trainer = registry.get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    assert isinstance(trainer.eval_collector, TopKCollector)
    trainer.optimizer.zero_grad()
    model.calculate_loss(next(iter(train))).backward()  # one step, so weights are not at their init
    trainer.optimizer.step()
    fast = [trainer.evaluate(split, load_best_model=False) for split in (valid, test)]
    trainer.eval_collector = Collector(config)
    with monkeypatch.context() as patch:
        reference_paths(patch, model)
        slow = [trainer.evaluate(split, load_best_model=False) for split in (valid, test)]
    assert fast == slow


def reference_frequency_forward(layer, x, keep):
    """The frequency branch as it was written with an FFT pair; ``keep`` is the dropout
    multiplier (0 or 1 / keep probability) to apply."""
    spectrum = torch.fft.rfft(x, dim=1, norm="ortho")
    keep_bins = torch.arange(spectrum.shape[1]) < layer.kept_bins
    low = torch.fft.irfft(spectrum * keep_bins[None, :, None], n=x.shape[1], dim=1, norm="ortho")
    mixed = low + layer.sqrt_beta.pow(2) * (x - low)
    return layer.layer_norm(x + mixed * keep)


@pytest.mark.parametrize("last_only", [False, True])
def test_frequency_branch_in_training_equals_the_fft_implementation(last_only, monkeypatch):
    torch.manual_seed(0)
    layer = FrequencyFilter(hidden_size=8, c=3, dropout=0.5, layer_norm_eps=1e-12).train()
    x = torch.randn(4, 9, 8)
    drawn = []

    def recording_keep_mask(*args, **kwargs):
        drawn.append(keep_mask(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(dropout, "keep_mask", recording_keep_mask)
    out = layer(x, last_only=last_only)
    (keep,) = drawn
    assert keep.shape == ((4, 1, 8) if last_only else (4, 9, 8))  # last_only draws its row only
    assert set(keep.unique().tolist()) == {0.0, 2.0}
    full_keep = torch.ones(4, 9, 8)
    full_keep[:, -keep.shape[1]:] = keep
    expected = reference_frequency_forward(layer, x, full_keep)
    torch.testing.assert_close(out, expected[:, -1:] if last_only else expected, atol=1e-5, rtol=1e-5)
