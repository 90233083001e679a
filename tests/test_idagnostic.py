"""IDAgnosticMMSR: encoders, freezing, fusions, caching, backbones, loss, cold start, transfer.

Tiny randomly initialised encoders built from transformers config objects (no download);
one tiny RecBole dataset (text + 32x32 images) generated into a temp folder.
"""
import copy
import os
import socket

import numpy as np
import pytest
import torch

from recbole_mm.config import ConfigError
from recbole_mm.model.layers.encoder_blocks import find_blocks, freeze_bottom, load_hf_encoder
from recbole_mm.model.layers.encoders import TextTower
from recbole_mm.model.layers.fusion import FUSIONS, build_fusion

torch.set_num_threads(1)

TINY = {
    "bert": dict(model_type="bert", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                 intermediate_size=64, vocab_size=100),
    "roberta": dict(model_type="roberta", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                    intermediate_size=64, vocab_size=100),
    "electra": dict(model_type="electra", hidden_size=32, embedding_size=16, num_hidden_layers=4,
                    num_attention_heads=2, intermediate_size=64, vocab_size=100),
    "vit": dict(model_type="vit", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                intermediate_size=64, image_size=32, patch_size=8),
    "vit_mae": dict(model_type="vit_mae", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                    intermediate_size=64, image_size=32, patch_size=8, mask_ratio=0.75),
    "swin": dict(model_type="swin", image_size=64, patch_size=4, embed_dim=8, depths=[2, 2, 2, 2],
                 num_heads=[1, 1, 1, 1], window_size=2),
    "resnet": dict(model_type="resnet", embedding_size=8, hidden_sizes=[8, 16, 16, 32],
                   depths=[1, 1, 1, 1], layer_type="bottleneck", image_size=32),
}
BLOCK_COUNTS = {"bert": 4, "roberta": 4, "electra": 4, "vit": 4, "vit_mae": 4, "swin": 8, "resnet": 4}


def build(family):
    cfg = dict(TINY[family])
    cfg.pop("image_size", None) if family == "resnet" else None
    return load_hf_encoder(None, cfg, True, "text_encoder_path")[0]


def encoder_inputs(family, model, batch=2):
    if family in ("bert", "roberta", "electra"):
        return {"input_ids": torch.randint(3, 100, (batch, 6)), "attention_mask": torch.ones(batch, 6, dtype=torch.long)}
    size = TINY[family].get("image_size", 32)
    return {"pixel_values": torch.randn(batch, 3, size, size)}


# ---------------------------------------------------------------------------- encoders
@pytest.mark.parametrize("family", list(TINY))
def test_block_finder_and_freezing_each_family(family):
    model = build(family)
    blocks = find_blocks(model)
    assert len(blocks) == BLOCK_COUNTS[family]
    params = list(model.named_parameters())
    first_trainable = next(blocks[-2].parameters())
    start = next(i for i, (_, p) in enumerate(params) if p is first_trainable)
    freeze_bottom(model, blocks, 2)
    assert [p.requires_grad for _, p in params] == [i >= start for i in range(len(params))]
    assert all(not p.requires_grad for b in blocks[:-2] for p in b.parameters())
    assert all(p.requires_grad for b in blocks[-2:] for p in b.parameters())
    model.train()
    out = model(**encoder_inputs(family, model)).last_hidden_state
    out.float().pow(2).mean().backward()
    for i, (name, p) in enumerate(params):
        if i < start:
            assert p.grad is None, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for b in blocks[-2:] for p in b.parameters())


def test_freeze_switches_and_override_path():
    model = build("bert")
    blocks = find_blocks(model)
    assert freeze_bottom(model, blocks, 0) == len(list(model.parameters()))
    assert not any(p.requires_grad for p in model.parameters())
    freeze_bottom(model, blocks, -1)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="4"):
        freeze_bottom(model, blocks, 5)
    assert find_blocks(model, "encoder.layer") == blocks
    swin = build("swin")
    assert len(find_blocks(swin, "encoder.layers.*.blocks")) == 8
    assert find_blocks(swin, "encoder.layers.*.blocks") == find_blocks(swin)


def test_twelve_layer_bert_trains_top_two_and_frozen_part_stays_eval():
    cfg = dict(TINY["bert"], num_hidden_layers=12)
    model = load_hf_encoder(None, cfg, True, "text_encoder_path")[0]
    ids, mask = torch.randint(3, 100, (5, 6)).int(), torch.ones(5, 6, dtype=torch.bool)
    tower = TextTower(model, ids, mask, n_finetune=2, cache_frozen=False)
    for i, layer in enumerate(model.encoder.layer):
        assert all(p.requires_grad == (i >= 10) for p in layer.parameters())
    assert all(p.requires_grad for p in model.pooler.parameters())
    assert not any(p.requires_grad for p in model.embeddings.parameters())
    tower.train()
    assert not model.embeddings.training and not model.encoder.layer[9].training
    assert model.encoder.layer[10].training


def test_missing_local_model_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="vision_encoder_path"):
        load_hf_encoder(str(tmp_path / "nope"), None, False, "vision_encoder_path")
    with pytest.raises(FileNotFoundError, match="text_encoder_path"):
        load_hf_encoder(None, None, False, "text_encoder_path")


@pytest.mark.parametrize("family,k", [("bert", 0), ("bert", 2), ("vit", 0), ("vit", 1), ("electra", 2)])
def test_cached_frozen_part_equals_uncached(family, k):
    from recbole_mm.data.raw_items import ImageStore
    from recbole_mm.model.layers.encoders import VisionTower

    torch.manual_seed(0)
    model = build(family)
    n = 6
    if family in ("bert", "electra"):
        ids = torch.randint(3, 100, (n, 8)).int()
        mask = torch.arange(8).unsqueeze(0) < torch.tensor([1, 8, 3, 5, 8, 2]).unsqueeze(1)
        make = lambda m, c: TextTower(m, ids, mask, n_finetune=k, cache_frozen=c, cache_dtype="float32")
    else:
        store = ImageStore(images=torch.randint(0, 255, (n, 3, 32, 32), dtype=torch.uint8), image_size=32)
        make = lambda m, c: VisionTower(m, store, "half", n_finetune=k, cache_frozen=c, cache_dtype="float32")
    cached, plain = make(model, True), make(copy.deepcopy(model), False)
    assert cached.cache_mode == ("output" if k == 0 else "block_input")
    cached.eval(), plain.eval()
    items = torch.tensor([1, 2, 3, 5, 2])
    for _ in range(2):  # second pass reads the filled cache
        (a, am), (b, bm) = cached(items), plain(items)
        assert torch.equal(am, bm)
        assert torch.allclose(a, b, atol=1e-5)
    if k > 0:  # gradients still reach the trainable top through the cached path
        cached.train()
        cached(items)[0].sum().backward()
        assert next(cached.blocks[-1].parameters()).grad is not None


# ---------------------------------------------------------------------------- fusion
@pytest.mark.parametrize("name", FUSIONS)
def test_every_fusion_depends_on_both_modalities(name):
    torch.manual_seed(0)
    fusion = build_fusion(name, 16, n_heads=2, dnn_final_act=False).eval()
    x, y = torch.randn(3, 5, 16), torch.randn(3, 4, 16)
    xm = torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool)
    ym = torch.ones(3, 4, dtype=torch.bool)
    out = fusion(x, xm, y, ym)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    x2 = x.clone()
    x2[:, 0] += torch.randn(16)  # not a constant: LayerNorm removes constant shifts
    assert not torch.allclose(fusion(x2, xm, y, ym), out, atol=1e-6)
    y2 = y.clone()
    y2[:, 1] += torch.randn(16)
    assert not torch.allclose(fusion(x, xm, y2, ym), out, atol=1e-6)
    x3 = x.clone()
    x3[:, 3:] = 100.0  # masked text tokens change nothing
    assert torch.allclose(fusion(x3, xm, y, ym), out, atol=1e-5)
    no_image = fusion(x, xm, y, torch.zeros_like(ym))  # item without an image: finite
    assert torch.isfinite(no_image).all()


def test_merge_attention_type_embedding_matters():
    torch.manual_seed(0)
    fusion = build_fusion("merge_attn", 16, n_heads=2).eval()
    x, y = torch.randn(2, 3, 16), torch.randn(2, 4, 16)
    m1, m2 = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    out = fusion(x, m1, y, m2)
    with torch.no_grad():
        fusion.type_embedding.weight.zero_()
    assert not torch.allclose(fusion(x, m1, y, m2), out, atol=1e-6)


# ---------------------------------------------------------------------------- model on data
def write_toy_dataset(root, name, n_users, n_items, seed=0):
    from PIL import Image

    rng = np.random.RandomState(seed)
    folder = os.path.join(root, name)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    words = ["red", "blue", "glue", "glove", "pipette", "magnet", "steel", "tape", "box", "lamp"]
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u in range(n_users):
            for t in range(rng.randint(5, 9)):
                f.write(f"u{u}\ti{rng.randint(n_items)}\t{t}\n")
    with open(os.path.join(folder, f"{name}.text"), "w") as f:
        f.write("item_id:token\ttext:token_seq\n")
        for i in range(n_items):
            f.write(f"i{i}\t" + " ".join(rng.choice(words, rng.randint(2, 6))) + "\n")
    for i in range(n_items):
        if i != 3:  # item i3 has no image
            Image.fromarray(rng.randint(0, 255, (40, 40, 3)).astype(np.uint8)).save(
                os.path.join(folder, "images", f"i{i}.png"))


BASE = dict(
    text_encoder_path=None, text_encoder_config=TINY["bert"], vision_encoder_config=TINY["vit"],
    allow_random_init=True, item_image_dir="images", embedding_size=16, inner_size=32, fusion_heads=2,
    n_finetune_blocks_text=1, n_finetune_blocks_vision=1, epochs=1, eval_step=1, train_batch_size=16,
    show_progress=False, state="ERROR", load_col={"inter": ["user_id", "item_id", "timestamp"]},
    user_inter_num_interval="[0,inf)", item_inter_num_interval="[0,inf)", item_encode_batch=7,
    modalities=["text", "image"], fusion="merge_attn", backbone="sasrec", gru_layers=2, seed=1, cache_dtype="float32",
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from recbole.data import data_preparation

    from recbole_mm.config import Config
    from recbole_mm.quick_start import create_dataset

    root = tmp_path_factory.mktemp("idag")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        data = {}
        for name, users, items in (("toya", 30, 40), ("toyb", 20, 70)):
            write_toy_dataset(str(root), name, users, items)
            config = Config(model="IDAgnosticMMSR", dataset=name,
                            config_dict=dict(BASE, data_path=str(root)), parse_argv=False)
            dataset = create_dataset(config)
            data[name] = (config, data_preparation(config, dataset))
    finally:
        os.chdir(cwd)
    data["root"] = root
    return data


def make_model(toy, name="toya", **overrides):
    from recbole_mm.model.idagnostic import IDAgnosticMMSR

    config, (train, valid, test) = toy[name]
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        config[key] = value
    torch.manual_seed(0)
    return IDAgnosticMMSR(config, train._dataset), train, test


def first_batch(loader):
    batch = next(iter(loader))
    return batch[0] if isinstance(batch, tuple) else batch


def test_raw_items_align_to_internal_ids(toy):
    from recbole_mm.data.raw_items import load_item_image_paths, load_item_texts

    config, (train, _, _) = toy["toya"]
    dataset = train._dataset
    texts = load_item_texts(config, dataset)
    paths = load_item_image_paths(config, dataset)
    tokens = dataset.field2id_token["item_id"]
    raw = dict(line.rstrip("\n").split("\t") for line in
               open(os.path.join(toy["root"], "toya", "toya.text")).readlines()[1:])
    assert texts[0] == "" and paths[0] is None
    for i in range(1, len(tokens)):
        assert texts[i] == raw[tokens[i]]
        assert (paths[i] is None) == (tokens[i] == "i3")
        if paths[i]:
            assert os.path.basename(paths[i]) == f"{tokens[i]}.png"


def test_evaluation_is_deterministic_with_mae_masking(toy):
    model, _, test = make_model(toy, modalities=["image"], vision_encoder_config=TINY["vit_mae"])
    assert model.vision_tower.cache_mode is None  # random masking in training: no frozen cache
    interaction = first_batch(test)
    model.eval()
    a = model.full_sort_predict(interaction)
    model.invalidate_item_table()
    b = model.full_sort_predict(interaction)
    assert torch.equal(a, b)
    ids = torch.tensor([1, 2])
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model.encode_items(ids), model.encode_items(ids))


def test_item_table_cached_per_evaluation_and_refreshed_after_a_step(toy):
    model, train, test = make_model(toy)
    interaction = first_batch(test)
    model.eval()
    calls = model.text_tower.forward_calls
    a = model.full_sort_predict(interaction)
    after_first = model.text_tower.forward_calls
    assert after_first - calls == -(-(model.n_items - 1) // 7)  # chunks of item_encode_batch
    assert torch.equal(model.full_sort_predict(interaction), a)
    assert model.text_tower.forward_calls == after_first  # no re-encoding
    model.train()
    optimizer = torch.optim.AdamW(model.optimizer_param_groups())
    for batch in train:
        loss = model.calculate_loss(batch)
        if loss.requires_grad and loss.grad_fn is not None:
            break
    loss.backward()
    optimizer.step()
    model.on_train_step_end()
    model.eval()
    b = model.full_sort_predict(interaction)
    assert model.text_tower.forward_calls > after_first
    assert not torch.allclose(a, b)
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        model.text_proj.proj.weight.mul_(2)
    model.invalidate_item_table()
    assert not torch.allclose(model.full_sort_predict(interaction), b)
    model.load_state_dict(state)  # loading weights also refreshes the table
    assert torch.allclose(model.full_sort_predict(interaction), b, atol=1e-6)


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec", "nextitnet"])
def test_each_backbone_trains_one_step_and_is_causal(toy, backbone):
    model, train, test = make_model(toy, backbone=backbone, dense_train_last_only=False)
    model.train()
    before = copy.deepcopy(model.backbone.state_dict())
    optimizer = torch.optim.AdamW(model.optimizer_param_groups())
    loss = model.calculate_loss(first_batch(train))
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    model.eval()
    seq = torch.tensor([[4, 5, 6, 7, 0, 0], [8, 9, 0, 0, 0, 0]])
    emb = model.item_table()[seq]
    out = model.backbone(emb, seq)
    changed = seq.clone()
    changed[0, 3] = 10  # change item t+1 = 3: outputs at t <= 2 unchanged
    out2 = model.backbone(model.item_table()[changed], changed)
    assert torch.allclose(out[0, :3], out2[0, :3], atol=1e-6)
    assert not torch.allclose(out[0, 3], out2[0, 3])
    shorter = seq[:, :4]  # fewer right pads: same states at real positions
    assert torch.allclose(model.backbone(model.item_table()[shorter], shorter)[1, :2], out[1, :2], atol=1e-6)


def test_loss_equals_slow_per_slot_reference(toy, monkeypatch):
    import torch.nn.functional as F

    model, train, _ = make_model(toy, dense_train_last_only=False, hidden_dropout_prob=0.0,
                                 attn_dropout_prob=0.0)
    model.eval()  # no dropout: unique-item encoding must equal per-slot encoding
    seq = torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0]])
    lengths, target = torch.tensor([3, 2]), torch.tensor([7, 8])
    neg = torch.tensor([[9, 10, 11, 12], [13, 14, 15, 16]])
    monkeypatch.setattr(model, "sample_negatives", lambda s, t, v: neg[:, : s.shape[1]])
    from recbole.data.interaction import Interaction

    interaction = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths, model.ITEM_ID: target,
                               model.USER_ID: torch.tensor([1, 2])})
    loss = model.calculate_loss(interaction)
    pos_scores, neg_scores = [], []
    with torch.no_grad():
        for b in range(2):
            vecs = torch.stack([model.encode_items(torch.tensor([int(i)]))[0] for i in seq[b]])
            states = model.backbone(vecs.unsqueeze(0), seq[b : b + 1])[0]
            nxt = list(seq[b, 1 : lengths[b]]) + [target[b]]
            for t in range(int(lengths[b])):
                pos_scores.append(states[t] @ model.encode_items(torch.tensor([int(nxt[t])]))[0])
                neg_scores.append(states[t] @ model.encode_items(neg[b, t : t + 1])[0])
    pos, negs = torch.stack(pos_scores), torch.stack(neg_scores)
    expected = F.softplus(-pos).mean() + F.softplus(negs).mean()  # BCE(s+,1) + BCE(s-,0)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_negatives_avoid_the_rows_items(toy):
    model, _, _ = make_model(toy)
    torch.manual_seed(0)
    seq = torch.stack([torch.randperm(model.n_items - 1)[:12] + 1 for _ in range(8)])
    target = torch.randint(1, model.n_items, (8,))
    valid = torch.ones_like(seq, dtype=torch.bool)
    neg = model.sample_negatives(seq, target, valid)  # 13 of 40 items are taken per row
    rows = torch.cat([seq, target[:, None]], 1)
    assert not (neg.unsqueeze(-1) == rows.unsqueeze(1)).any()
    assert ((neg >= 1) & (neg < model.n_items)).all()


def test_param_groups_and_lr_step(toy, monkeypatch):
    from recbole_mm.model.idagnostic import IDAgnosticMMSRTrainer
    from recbole_mm.trainer import MMTrainer

    model, _, _ = make_model(toy, encoder_lr=5e-5, learning_rate=1e-4, weight_decay=0.1,
                             lr_step_epoch=2, lr_step_gamma=0.1)
    groups = {g["name"]: g for g in model.optimizer_param_groups()}
    assert (groups["text_encoder"]["lr"], groups["text_encoder"]["weight_decay"]) == (5e-5, 0.0)
    assert (groups["rest"]["lr"], groups["rest"]["weight_decay"]) == (1e-4, 0.1)
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    frozen = next(model.text_tower.model.embeddings.parameters())
    assert id(frozen) not in grouped
    config = copy.deepcopy(toy["toya"][0])
    config["lr_step_epoch"], config["lr_step_gamma"] = 2, 0.1
    monkeypatch.chdir(toy["root"])
    trainer = IDAgnosticMMSRTrainer(config, model)
    monkeypatch.setattr(MMTrainer, "_train_epoch", lambda self, *a, **k: 0.0)
    trainer._train_epoch(None, 1)
    assert {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}["rest"] == pytest.approx(1e-4)
    trainer._train_epoch(None, 2)
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["rest"] == pytest.approx(1e-5) and lrs["text_encoder"] == pytest.approx(5e-6)


def test_cold_item_scored_without_id_and_weights_transfer(toy, tmp_path):
    model, _, test = make_model(toy)
    model.eval()
    interaction = first_batch(test)
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    vec = model.encode_raw(["a brand new magnet never seen", "glue"], images)
    assert vec.shape == (2, 16) and torch.isfinite(vec).all()
    scores = model.predict_raw(interaction, ["a brand new magnet never seen", "glue"], images)
    assert scores.shape == (len(interaction), 2) and torch.isfinite(scores).all()
    # a stored item re-encoded from its raw text and image (no ID) gets the same vector
    from recbole_mm.data.raw_items import load_item_texts

    texts = load_item_texts(toy["toya"][0], toy["toya"][1][0]._dataset)
    item = torch.tensor([5])
    raw = model.encode_raw([texts[5]], model.vision_tower.store.pixels(item))
    with torch.no_grad():
        assert torch.allclose(raw, model.encode_items(item), atol=1e-5)
    other, _, _ = make_model(toy, "toyb")  # 70 items instead of 40
    assert other.n_items != model.n_items
    other.load_state_dict(model.state_dict(), strict=True)
    path = tmp_path / "a.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded, _, _ = make_model(toy, "toyb", pretrained_checkpoint=str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_text_only_and_image_only_modes(toy):
    text_model, _, test = make_model(toy, modalities=["text"], item_image_dir=None)
    assert text_model.vision_tower is None
    image_model, _, _ = make_model(toy, modalities=["image"], item_text_file="missing.text")
    assert image_model.text_tower is None
    interaction = first_batch(test)
    for model in (text_model, image_model):
        model.eval()
        assert torch.isfinite(model.full_sort_predict(interaction)).all()
    with pytest.raises(FileNotFoundError, match="item_image_dir"):
        make_model(toy, modalities=["text", "image"], item_image_dir=None, item_source="raw")
    with pytest.raises(ConfigError, match="item_image_dir"):  # auto: no raw images and no feature files
        make_model(toy, modalities=["text", "image"], item_image_dir=None)


def test_end_to_end_recbole_run_offline(toy, monkeypatch):
    from recbole_mm.quick_start import run_recbole_mm

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.chdir(toy["root"])
    result = run_recbole_mm(model="IDAgnosticMMSR", dataset="toya",
                            config_dict=dict(BASE, data_path=str(toy["root"]), fusion="gate_dnn",
                                             n_finetune_blocks_text=0), saved=False)
    assert 0.0 <= result["test_result"]["hit@10"] <= 1.0


@pytest.mark.parametrize("modalities,fusion", [(["text"], "sum"), (["image"], "sum"), (["text", "image"], "film")])
def test_mean_then_project_equals_project_then_mean(toy, modalities, fusion):
    model, _, _ = make_model(toy, modalities=modalities, fusion=fusion)
    model.eval()
    assert model._pool_first
    ids = torch.arange(1, model.n_items)
    with torch.no_grad():
        if model.vision_tower is not None:  # a trained bias must not leak into image-less items
            model.vision_proj.proj.bias.normal_()
        fast = model.encode_items(ids)
        model._pool_first = False
        slow = model.encode_items(ids)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_loading_other_frozen_weights_clears_the_frozen_cache(toy):
    model, _, _ = make_model(toy, n_finetune_blocks_text=0)
    model.eval()
    model.item_table()
    assert model.text_tower._cache is not None
    model.load_state_dict(copy.deepcopy(model.state_dict()))  # same weights: cache kept
    assert model.text_tower._cache is not None
    state = copy.deepcopy(model.state_dict())
    key = next(k for k in state if k.startswith("text_tower.model.encoder.layer.0."))
    state[key] = state[key] + 1.0
    model.load_state_dict(state)
    assert model.text_tower._cache is None


@pytest.mark.parametrize("text,vision", [("roberta", "swin"), ("electra", "resnet"), ("bert", "vit_mae")])
def test_each_encoder_family_trains_and_scores_in_the_model(toy, text, vision):
    vision_cfg = {k: v for k, v in TINY[vision].items() if not (vision == "resnet" and k == "image_size")}
    model, train, test = make_model(toy, text_encoder_config=TINY[text], vision_encoder_config=vision_cfg,
                                    image_size=64, fusion="co_attn", dense_train_last_only=False)
    model.train()
    loss = model.calculate_loss(first_batch(train))
    loss.backward()
    assert torch.isfinite(loss)
    assert next(model.vision_tower.blocks[-1].parameters()).grad is not None
    assert next(model.text_tower.blocks[-1].parameters()).grad is not None
    assert all(p.grad is None for p in model.text_tower.blocks[0].parameters())
    model.eval()
    assert torch.isfinite(model.full_sort_predict(first_batch(test))).all()


# ---------------------------------------------------------------------------- loss_type
def test_ce_loss_equals_hand_computed_cross_entropy_and_differs_from_bce(toy):
    from recbole.data.interaction import Interaction

    model, _, _ = make_model(toy, loss_type="CE", dense_train_last_only=False)
    model.eval()  # no dropout: the hand computation below is deterministic
    seq = torch.tensor([[2, 3, 4, 0], [5, 6, 0, 0]])
    lengths, target = torch.tensor([3, 2]), torch.tensor([7, 8])
    interaction = Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: lengths, model.ITEM_ID: target,
                               model.USER_ID: torch.tensor([1, 2])})
    loss = model.calculate_loss(interaction)
    with torch.no_grad():  # slow reference: every item encoded on its own, softmax over items 1..N-1
        table = torch.stack([torch.zeros(model.d)] + [model.encode_items(torch.tensor([i]))[0]
                                                       for i in range(1, model.n_items)])
        terms = []
        for b in range(2):
            states = model.backbone(table[seq[b]].unsqueeze(0), seq[b : b + 1])[0]
            nxt = list(seq[b, 1 : lengths[b]]) + [target[b]]
            for t in range(int(lengths[b])):
                logits = table[1:] @ states[t]
                terms.append(torch.logsumexp(logits, 0) - logits[int(nxt[t]) - 1])
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)
    loss.backward()  # the whole catalogue's encoding gets gradients
    assert model.text_proj.proj.weight.grad is not None
    model.loss_type = "BCE"
    assert not torch.allclose(model.calculate_loss(interaction), loss, atol=1e-3)


def test_unknown_loss_type_is_a_config_error(toy):
    with pytest.raises(ConfigError, match="loss_type"):
        make_model(toy, loss_type="BPR")


# ---------------------------------------------------------------------------- ResNet: grid vs pooled
@pytest.mark.parametrize("modalities,fusion,grid", [(["image"], "merge_attn", False),
                                                    (["text", "image"], "gate", False),
                                                    (["text", "image"], "merge_attn", True)])
def test_resnet_pooled_vector_unless_token_fusion(toy, modalities, fusion, grid):
    resnet = {k: v for k, v in TINY["resnet"].items() if k != "image_size"}
    model, _, _ = make_model(toy, modalities=modalities, fusion=fusion, vision_encoder_config=resnet,
                             image_size=32)
    assert model.vision_proj.grid is grid
    assert isinstance(model.vision_proj.proj, torch.nn.Conv2d if grid else torch.nn.Linear)
    if modalities == ["image"]:  # MMSR-V with a CNN = Linear(pooled 4th-stage vector)
        model.eval()
        ids = torch.tensor([i for i in range(1, 9) if model.vision_tower.store.has_image[i]])
        with torch.no_grad():
            pooled = model.vision_tower.model(**model.vision_tower.raw_inputs(ids)).pooler_output.flatten(1)
            assert pooled.shape[1] == 32
            assert torch.allclose(model.encode_items(ids), model.vision_proj.proj(pooled), atol=1e-5)


# ---------------------------------------------------------------------------- item_source: features
def feature_only_config(tmp_path, info, **overrides):
    from conftest import tiny_run_config

    small = dict(embedding_size=24, inner_size=32, n_layers=1, eval_step=1, train_batch_size=64,
                 load_col={"inter": ["user_id", "item_id", "timestamp"]})
    return tiny_run_config(tmp_path, data_path=info["data_path"], multimodal_features=info["features"],
                           **{**small, **overrides})


@pytest.fixture
def feature_only(tmp_path, monkeypatch):
    """An MMRec-style set: interactions and *_feat.npy files, no raw text or images."""
    from conftest import write_tiny_dataset

    monkeypatch.chdir(tmp_path)
    return write_tiny_dataset(str(tmp_path / "data"), dims={"image": 5, "text": 6})  # image declared first


def feature_model(tmp_path, info, **overrides):
    from recbole.data import data_preparation

    from recbole_mm.config import Config
    from recbole_mm.model.idagnostic import IDAgnosticMMSR
    from recbole_mm.quick_start import create_dataset

    config = Config("IDAgnosticMMSR", info["name"], config_dict=feature_only_config(tmp_path, info, **overrides),
                    parse_argv=False)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    torch.manual_seed(0)
    return IDAgnosticMMSR(config, train.dataset), train, test


def test_feature_only_dataset_runs_with_default_settings(tmp_path, feature_only):
    from recbole_mm.quick_start import run_recbole_mm

    result = run_recbole_mm("IDAgnosticMMSR", feature_only["name"],
                            config_dict=feature_only_config(tmp_path, feature_only), saved=False)
    assert 0.0 <= result["test_result"]["hit@10"] <= 1.0


def test_feature_mode_item_vectors_are_projections_of_the_frozen_features(tmp_path, feature_only):
    model, train, test = feature_model(tmp_path, feature_only)
    assert model.item_source == "features" and model.modalities == ["text", "image"]  # text is x, image is y
    assert model.text_tower is None and model.vision_tower is None
    assert not any(name.startswith("features_") for name in model.state_dict())  # no item-count shapes
    model.eval()
    dataset = train.dataset
    ids = torch.arange(1, model.n_items)
    with torch.no_grad():
        text = model.feature_proj["text"](dataset.item_features["text"][ids]).unsqueeze(1)
        image = model.feature_proj["image"](dataset.item_features["image"][ids]).unsqueeze(1)
        ones = torch.ones(len(ids), 1, dtype=torch.bool)
        assert torch.allclose(model.encode_items(ids), model.fusion(text, ones, image, ones), atol=1e-5)
        cold = model.encode_raw(features={m: dataset.item_features[m][ids[:3]] for m in model.modalities})
        assert torch.allclose(cold, model.encode_items(ids[:3]), atol=1e-5)
    single, *_ = feature_model(tmp_path, feature_only, modalities=["image"])
    single.eval()
    with torch.no_grad():
        expected = single.feature_proj["image"](dataset.item_features["image"][ids])
        assert torch.allclose(single.encode_items(ids), expected, atol=1e-5)
    model.train()
    loss = model.calculate_loss(first_batch(train))
    loss.backward()
    assert torch.isfinite(loss) and model.feature_proj["image"].proj.weight.grad is not None


def test_feature_mode_refuses_co_attention_and_raw_mode_names_the_missing_text(tmp_path, feature_only):
    with pytest.raises(ConfigError, match="'fusion' = co_attn.*merge_attn"):
        feature_model(tmp_path, feature_only, fusion="co_attn")
    with pytest.raises(ConfigError, match="item_text_file"):
        feature_model(tmp_path, feature_only, item_source="raw")
    with pytest.raises(FileNotFoundError, match="item_text_file"):
        feature_model(tmp_path, feature_only, item_source="raw", modalities=["text"])
    with pytest.raises(ConfigError, match="item_source"):
        feature_model(tmp_path, feature_only, item_source="pixels")
