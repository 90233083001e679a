"""Runs keep their own files: checkpoints that never collide, a reload that works in a fresh
process, ``--resume`` that reproduces an uninterrupted run, sealed dataset caches, file modes,
caches only in folders recbole_mm wrote."""
import glob
import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from recbole.trainer import Trainer

from conftest import REPO_ROOT, tiny_run_config, write_tiny_dataset
from recbole_mm import utils
from recbole_mm.errors import ConfigError, UserPathError
from recbole_mm.quick_start import create_dataset, run_recbole_mm

MODELS = {  # tiny settings per model; every width key set consistently
    "SASRec": dict(hidden_size=16, inner_size=32, n_layers=1, n_heads=1),
    "MuSTRec": dict(embedding_size=8, hidden_size=8, inner_size=16, knn_k=3),
    "MMSR": dict(embedding_size=8, code_num=4, code_ae_epochs=3),
    "MDSRec": dict(embedding_size=16, hidden_size=16, inner_size=32, n_centers=4, knn_k=3),
    "IDAgnosticMMSR": dict(embedding_size=16, inner_size=32, n_layers=1, fusion_heads=2, text_encoder_path=None,
                           text_encoder_config=dict(model_type="bert", hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64, vocab_size=100),
                           allow_random_init=True, n_finetune_blocks_text=1, item_encode_batch=16),
}


@pytest.fixture
def data(tmp_path):
    info = write_tiny_dataset(str(tmp_path / "data"), n_users=40, n_items=50)
    with open(os.path.join(info["folder"], "tiny.text"), "w") as handle:  # IDAgnosticMMSR reads raw text
        handle.write("item_id:token\ttext:token_seq\n" + "".join(f"{i}\titem number {i}\n" for i in range(50)))
    return info


def config_for(data, root, model="SASRec", **overrides):
    return tiny_run_config(root, data_path=data["data_path"], multimodal_features=data["features"],
                           train_batch_size=64, **{**MODELS[model], **overrides})


# ----------------------------------------------------------------------------- names
def test_two_runs_started_in_the_same_second_keep_their_own_checkpoints(tmp_path, in_tmp, data, monkeypatch):
    """Before: both runs wrote saved/SASRec-<second>.pth and the first run's test metrics could come
    from the second run's model."""
    monkeypatch.setattr(utils.time, "strftime", lambda *a: "Jan-01-2030_00-00-00")  # the same second
    results = [run_recbole_mm("SASRec", "tiny", config_dict=config_for(data, tmp_path, seed=seed), saved=True)
               for seed in (1, 2)]
    first, second = (r["checkpoint"] for r in results)
    assert first != second and os.path.isfile(first) and os.path.isfile(second)
    assert os.path.basename(first).startswith("SASRec-Jan-01-2030_00-00-00-")  # RecBole's prefix kept
    assert results[0]["log_file"] != results[1]["log_file"]
    weights = [torch.load(path, weights_only=False)["state_dict"] for path in (first, second)]
    assert not torch.equal(weights[0]["item_embedding.weight"], weights[1]["item_embedding.weight"])


def test_runner_prints_the_checkpoint_it_wrote(tmp_path, data, monkeypatch, capsys):
    import run_recbole_mm as runner

    config_file = tmp_path / "c.yaml"
    config_file.write_text(json.dumps({k: v for k, v in config_for(data, tmp_path).items() if v is not None}))
    argv = ["--model=SASRec", "--dataset=tiny", f"--config_files={config_file}"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *argv])
    assert runner.main(argv) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("checkpoint: ")]
    assert len(printed) == 1 and os.path.isfile(printed[0].split(": ", 1)[1])


# ----------------------------------------------------------------------------- reload
RELOAD_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    assert not hasattr(np, "float")  # nothing has set RecBole's numpy aliases in this process
    import torch
    from recbole_mm import registry
    from recbole_mm.quick_start import load_data_and_model
    out = {}
    for model_name, path in json.loads(sys.argv[1]).items():
        config, model, dataset, train_data, valid_data, test_data = load_data_and_model(path)
        trainer = registry.get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
        test = trainer.evaluate(test_data, load_best_model=False)
        batch = next(iter(test_data))[0]
        model.eval()
        with torch.no_grad():
            scores = model.full_sort_predict(batch.to(config["device"]))
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        loss = trainer._train_epoch(train_data, 0)
        loss = float(sum(loss) if isinstance(loss, tuple) else loss)
        changed = any(not torch.equal(a, p) for a, p in zip(before, [p for p in model.parameters() if p.requires_grad]))
        out[model_name] = {"test": {k: float(v) for k, v in test.items()}, "scores": list(scores.shape),
                           "finite": bool(torch.isfinite(scores[:, 1:]).all()), "loss": loss, "changed": changed}
    print(json.dumps(out))
""")


def test_reloaded_checkpoints_evaluate_predict_and_train_in_a_fresh_process(tmp_path, in_tmp, data):
    """Before: in a fresh process the reloaded model failed in RecBole's NDCG (np.float): RecBole
    sets its numpy aliases in Config.__init__, which an unpickled config never runs."""
    checkpoints, expected = {}, {}
    for model in MODELS:
        result = run_recbole_mm(model, "tiny", config_dict=config_for(data, tmp_path, model), saved=True)
        checkpoints[model], expected[model] = result["checkpoint"], result["test_result"]
    proc = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, json.dumps(checkpoints)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for model in MODELS:
        assert out[model]["test"] == pytest.approx(dict(expected[model]), abs=1e-4), model  # same model, same metrics
        assert out[model]["scores"][1] == 51 and out[model]["finite"], model
        assert out[model]["loss"] == out[model]["loss"] and out[model]["changed"], model  # trains on


def test_load_data_and_model_explains_bad_paths(tmp_path):
    from recbole_mm.quick_start import load_data_and_model

    with pytest.raises(UserPathError, match="checkpoint not found"):
        load_data_and_model(str(tmp_path / "nothing.pth"))
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserPathError, match="cannot read checkpoint"):
        load_data_and_model(str(tmp_path / "broken.pth"))


# ----------------------------------------------------------------------------- resume
def kill_at_epoch(monkeypatch, epoch):
    real = Trainer._train_epoch

    def train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        if epoch_idx == epoch:
            raise KeyboardInterrupt  # the run is killed while training this epoch
        return real(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)


def resumable_run(data, root, model, monkeypatch, **overrides):
    """Start a 3-epoch run, kill it during epoch 1, return its printed checkpoint path."""
    config = config_for(data, root, model, epochs=3, eval_step=1, stopping_step=10, **overrides)
    with monkeypatch.context() as patch:
        kill_at_epoch(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            run_recbole_mm(model, "tiny", config_dict=config, saved=True)
    (state,) = glob.glob(str(root / "saved" / f"{model}-*-last.pth"))
    return config, state[:-len("-last.pth")] + ".pth"


def same_weights(first, second):
    a, b = (torch.load(path, weights_only=False)["state_dict"] for path in (first, second))
    return all(torch.equal(a[k], b[k]) for k in a if a[k].layout == torch.strided)


@pytest.mark.parametrize("model", ["SASRec", "MuSTRec"])
def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, in_tmp, data, monkeypatch, model):
    """3 epochs straight vs. killed during epoch 1 and resumed to 3: same weights, same metrics.
    MuSTRec also draws from generators it holds (negative sampler, edge pruner)."""
    straight = run_recbole_mm(model, "tiny", saved=True, config_dict=config_for(
        data, tmp_path / "straight", model, epochs=3, eval_step=1, stopping_step=10))
    config, checkpoint = resumable_run(data, tmp_path / "killed", model, monkeypatch)
    resumed = run_recbole_mm(model, "tiny", config_dict={**config, "resume": checkpoint}, saved=True)
    assert resumed["checkpoint"] == checkpoint  # the same best-epoch file goes on
    assert resumed["test_result"] == straight["test_result"]
    assert resumed["best_valid_result"] == straight["best_valid_result"]
    assert same_weights(resumed["checkpoint"], straight["checkpoint"])


def test_resume_needs_the_random_state_and_data_order(tmp_path, in_tmp, data, monkeypatch):
    """The saved random state is what makes the continuation exact: without it the resumed run
    draws other dropout masks and another shuffling order, and ends elsewhere."""
    from recbole_mm import trainer as trainer_module

    straight = run_recbole_mm("SASRec", "tiny", saved=True, config_dict=config_for(
        data, tmp_path / "straight", epochs=3, eval_step=1, stopping_step=10))
    config, checkpoint = resumable_run(data, tmp_path / "killed", "SASRec", monkeypatch)
    monkeypatch.setattr(trainer_module, "restore_random_state", lambda *args: None)
    resumed = run_recbole_mm("SASRec", "tiny", config_dict={**config, "resume": checkpoint}, saved=True)
    assert not same_weights(resumed["checkpoint"], straight["checkpoint"])


def test_resume_of_a_finished_run_trains_nothing_and_keeps_the_best_epoch(tmp_path, in_tmp, data):
    config = config_for(data, tmp_path, epochs=2, eval_step=1)
    first = run_recbole_mm("SASRec", "tiny", config_dict=config, saved=True)
    best = torch.load(first["checkpoint"], weights_only=False)["state_dict"]
    again = run_recbole_mm("SASRec", "tiny", config_dict={**config, "resume": first["checkpoint"]}, saved=True)
    assert again["test_result"] == first["test_result"]
    after = torch.load(first["checkpoint"], weights_only=False)["state_dict"]
    assert all(torch.equal(best[k], after[k]) for k in best)


def test_resume_refuses_another_model_or_a_missing_file(tmp_path, in_tmp, data):
    first = run_recbole_mm("SASRec", "tiny", config_dict=config_for(data, tmp_path, epochs=1), saved=True)
    with pytest.raises(ConfigError, match="is a SASRec run on 'tiny', not GRU4Rec"):
        run_recbole_mm("GRU4Rec", "tiny", saved=True, config_dict=tiny_run_config(
            tmp_path, data_path=data["data_path"], resume=first["checkpoint"], hidden_size=16, embedding_size=16))
    with pytest.raises(UserPathError, match="config key 'resume': no checkpoint at"):
        run_recbole_mm("SASRec", "tiny", saved=True, config_dict=config_for(
            data, tmp_path, resume=str(tmp_path / "gone.pth")))


def test_save_last_state_false_writes_only_the_checkpoint(tmp_path, in_tmp, data):
    result = run_recbole_mm("SASRec", "tiny", saved=True, config_dict=config_for(data, tmp_path, save_last_state=False))
    assert os.listdir(tmp_path / "saved") == [os.path.basename(result["checkpoint"])]


# ----------------------------------------------------------------------------- files and folders
def test_atomic_write_gives_the_mode_open_would(tmp_path):
    old = os.umask(0o022)
    try:
        utils.atomic_write(str(tmp_path / "a.bin"), lambda f: f.write(b"x"))
        os.umask(0o077)
        utils.atomic_write(str(tmp_path / "b.bin"), lambda f: f.write(b"x"))
        os.chmod(tmp_path / "a.bin", 0o640)
        utils.atomic_write(str(tmp_path / "a.bin"), lambda f: f.write(b"y"))  # replacing keeps the mode
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.bin").st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "b.bin").st_mode & 0o777 == 0o600
    assert open(tmp_path / "a.bin", "rb").read() == b"y"


def test_graph_caches_only_go_into_folders_recbole_mm_wrote(tmp_path, data, monkeypatch):
    """Before: with the working directory at a dataset's parent, runs wrote graph_cache/ into the
    dataset folder, and stopped when that folder was read-only."""
    from recbole_mm.data import dataset as dataset_module
    from recbole_mm.data.dataset import default_graph_cache_dir

    monkeypatch.chdir(data["data_path"])  # the working directory holds the dataset folder
    saved = str(tmp_path / "saved")
    assert default_graph_cache_dir(data["folder"], saved, "tiny") == os.path.join(saved, "graph_cache", "tiny")
    with open(os.path.join(data["folder"], "prepare_manifest.mmrec.json"), "w") as handle:
        handle.write("{}")  # now a folder `prepare` wrote
    assert default_graph_cache_dir(data["folder"], saved, "tiny") == os.path.join(data["folder"], "graph_cache")
    real = dataset_module.writable_folder
    monkeypatch.setattr(dataset_module, "writable_folder",  # read-only data folder (chmod does not bind root)
                        lambda path: False if str(path).startswith(data["folder"]) else real(path))
    assert default_graph_cache_dir(data["folder"], saved, "tiny") == os.path.join(saved, "graph_cache", "tiny")


def test_saved_dataset_is_sealed_and_rebuilt_when_damaged_or_stale(tmp_path, in_tmp, data, caplog):
    from recbole_mm.config import Config

    caplog.set_level(logging.INFO)

    def config():
        return Config(model="SASRec", dataset="tiny", parse_argv=False,
                      config_dict=config_for(data, tmp_path, save_dataset=True))

    first = create_dataset(config())
    (path,) = glob.glob(str(tmp_path / "saved" / "tiny-*.pth"))
    assert create_dataset(config()).inter_num == first.inter_num and "Load filtered dataset" in caplog.text
    blob = bytearray(open(path, "rb").read())
    blob[len(blob) // 2] ^= 0x01
    open(path, "wb").write(bytes(blob))
    caplog.clear()
    rebuilt = create_dataset(config())
    assert "failed its check" in caplog.text and rebuilt.inter_num == first.inter_num
    inter = os.path.join(data["folder"], "tiny.inter")
    lines = open(inter).read().splitlines()
    open(inter, "w").write("\n".join(lines[:-3]) + "\n")  # the data changed: the cache is stale
    caplog.clear()
    assert create_dataset(config()).inter_num == first.inter_num - 3
    with pytest.raises(Exception):
        pickle.loads(open(path, "rb").read())  # sealed: not a bare pickle any more
