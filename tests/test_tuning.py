"""Hyper-parameter search: .hyper parsing and its errors, space conversion, selection on the
validation split, path pinning, and 2-trial hyperopt and Ray Tune searches on tiny ml-100k."""
import json
import math
import os
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, ml100k_config
from recbole_mm import tuning, tuning_ray
from recbole_mm.tuning import SearchSpaceError

# Tiny SASRec on ml-100k users with <= 40 interactions (305 users): a trial takes a few seconds.
TINY = dict(hidden_size=16, inner_size=32, n_layers=1, n_heads=1, MAX_ITEM_LIST_LENGTH=10,
            train_batch_size=2048, user_inter_num_interval="[0,40]", save_dataset=False)


def write(tmp_path, text, name="space.hyper"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------ search-space file
def test_parse_recbole_format(tmp_path):
    path = write(tmp_path, "# comment\nlearning_rate loguniform -8,0\nhidden_size choice [32, 64]\n\n"
                           "dropout uniform 0.1,0.5   # inline comment\nn_layers quniform 1,3,1\n"
                           "act choice ['gelu','relu']\n")
    params = {p.name: p for p in tuning.parse_search_space(path)}
    assert list(params) == ["learning_rate", "hidden_size", "dropout", "n_layers", "act"]
    assert (params["learning_rate"].low, params["learning_rate"].high) == (-8.0, 0.0)
    assert params["hidden_size"].values == [32, 64]  # "[32, 64]": spaces joined as RecBole does
    assert params["n_layers"].q == 1.0 and params["n_layers"].integer_steps()
    assert params["act"].values == ["gelu", "relu"]


@pytest.mark.parametrize("line, pattern", [
    ("lr loguniform -8", r"space.hyper:2: loguniform 'lr' takes low,high"),
    ("lr gaussian 0,1", r"space.hyper:2: unknown type 'gaussian'.*choice, uniform, quniform, loguniform"),
    ("hidden_size choice 32", r"space.hyper:2: choice values of 'hidden_size' must be a non-empty Python list"),
    ("hidden_size choice []", r"non-empty Python list"),
    ("x choice [__import__('os')]", r"non-empty Python list"),  # never eval()'d
    ("lr uniform 0.5,0.1", r"needs low < high"),
    ("n quniform 1,3,0", r"positive step"),
    ("lr_only_two_fields choice", r"space.hyper:2: .* needs three fields"),
    ("a uniform 0,1", r"'a' is defined twice"),
])
def test_bad_search_space_lines(tmp_path, line, pattern):
    path = write(tmp_path, f"a uniform 0,1\n{line}\n")
    with pytest.raises(SearchSpaceError, match=pattern):
        tuning.parse_search_space(path)


def test_missing_or_empty_space_file(tmp_path):
    with pytest.raises(SearchSpaceError, match="search-space file not found: .*nope.hyper"):
        tuning.parse_search_space(str(tmp_path / "nope.hyper"))
    with pytest.raises(SearchSpaceError, match="defines no parameter"):
        tuning.parse_search_space(write(tmp_path, "# nothing\n\n"))


def test_exhaustive_needs_choices_only(tmp_path):
    params = tuning.parse_search_space(write(tmp_path, "a choice [1,2,3]\nb choice [x_y]\n"
                                             .replace("[x_y]", "['x','y']")))
    assert tuning.grid_size(params) == 6
    with pytest.raises(SearchSpaceError, match="exhaustive search needs only 'choice'.*lr"):
        tuning.grid_size(tuning.parse_search_space(write(tmp_path, "lr uniform 0,1\n", "b.hyper")))


def test_run_hyper_cli_bad_space_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, REPO_ROOT)
    import run_hyper

    path = write(tmp_path, "learning_rate log_uniform -8,0\n")
    assert run_hyper.main(["--model=SASRec", f"--params_file={path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "space.hyper:1: unknown type 'log_uniform'" in err and "Traceback" not in err
    assert run_hyper.main(["--params_file=" + write(tmp_path, "lr uniform 0,1\n", "c.hyper"), "--algo=exhaustive"]) == 2
    assert "exhaustive search needs only 'choice'" in capsys.readouterr().err


# ------------------------------------------------------------------ space conversion
def test_hyperopt_and_ray_spaces_sample_inside_the_bounds(tmp_path):
    from hyperopt.pyll.stochastic import sample

    params = tuning.parse_search_space(write(tmp_path, "lr loguniform -9.2,-4.6\nn quniform 1,3,1\n"
                                                       "d uniform 0.1,0.5\nh choice [16,32]\n"))
    space = tuning.hyperopt_space(params)
    ray = tuning_ray.ray_space(params, "random")
    for seed in range(20):
        for drawn in (sample(space, rng=np.random.RandomState(seed)),
                      {k: v.sample() for k, v in ray.items()}):
            values = tuning.clean_params(params, drawn)
            assert math.exp(-9.2) - 1e-12 <= values["lr"] <= math.exp(-4.6) + 1e-12  # natural-log bounds
            assert type(values["n"]) is int and 1 <= values["n"] <= 3  # integer quniform → int
            assert 0.1 <= values["d"] <= 0.5 and values["h"] in (16, 32)
    grid = tuning_ray.ray_space(tuning.parse_search_space(write(tmp_path, "h choice [16,32]\n", "g.hyper")),
                            "exhaustive")
    assert grid["h"] == {"grid_search": [16, 32]}


# ------------------------------------------------------------------ selection, paths, resources
def test_best_trial_is_chosen_on_validation_not_test():
    records = [
        {"trial": 0, "status": "ok", "valid_score": 0.30, "test": {"ndcg@20": 0.10}},
        {"trial": 1, "status": "ok", "valid_score": 0.20, "test": {"ndcg@20": 0.90}},
        {"trial": 2, "status": "failed", "error": "boom"},
    ]
    assert tuning.best_record(records, bigger=True)["trial"] == 0
    assert tuning.best_record(records, bigger=False)["trial"] == 1  # e.g. a loss-like valid metric
    assert tuning.best_record(records[2:]) is None


def test_trial_setup_pins_paths_and_never_reads_argv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["worker.py", "--node-ip-address=1.2.3.4", "--learning_rate=9"])
    (tmp_path / "fixed.yaml").write_text("checkpoint_dir: ckpt\n")
    setup, config = tuning.prepare_setup("SASRec", "ml-100k", ["fixed.yaml"],
                                         {"mm_feature_path": "feats", "data_path": "data/"}, output_dir="out")
    assert config["learning_rate"] != 9 and "node-ip-address" not in config.final_config_dict
    assert setup.config_file_list == [str(tmp_path / "fixed.yaml")]
    assert setup.config_dict["mm_feature_path"] == str(tmp_path / "feats")
    assert setup.config_dict["checkpoint_dir"] == str(tmp_path / "ckpt")
    assert setup.config_dict["data_path"] == str(tmp_path / "data")
    assert setup.output_dir == str(tmp_path / "out")


def test_impossible_ray_requests_are_refused():
    with pytest.raises(tuning.TuningError, match="gpus_per_trial=1 but this Ray cluster has 0 GPU"):
        tuning_ray.check_cluster({"CPU": 2.0}, cpus=1, gpus=1, attached=False)
    with pytest.raises(tuning.TuningError, match="cpus_per_trial=4 .* has 2 CPU"):
        tuning_ray.check_cluster({"CPU": 2.0}, cpus=4, gpus=0, attached=False)
    tuning_ray.check_cluster({"CPU": 2.0}, cpus=1, gpus=1, attached=True)  # autoscaler may add GPUs


# ------------------------------------------------------------------ end to end
def _check_results(summary, n_trials):
    assert os.path.isfile(summary["output_file"]) and os.path.isfile(summary["table_file"])
    with open(summary["output_file"]) as handle:
        saved = json.load(handle)
    assert saved["n_trials"] == n_trials and saved["n_failed"] == 0
    assert saved["valid_metric"] == "ndcg@20" and saved["mode"] == "max"
    scores = {r["trial"]: r["valid_score"] for r in saved["trials"]}
    assert saved["best"]["valid_score"] == max(scores.values())
    for record in saved["trials"]:
        assert record["valid"]["ndcg@20"] == pytest.approx(record["valid_score"])
        assert set(record["test"]) == {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (10, 20)}
    table = open(summary["table_file"]).read()
    assert "| trial | learning_rate | valid ndcg@20 | test ndcg@20 |" in table and "best trial (*)" in table
    return saved


def test_hyperopt_two_trials_on_tiny_ml100k(tmp_path, in_tmp):
    space = write(tmp_path, "learning_rate choice [0.001,0.01]\n")
    summary = tuning.run_search("SASRec", "ml-100k", space, config_dict=ml100k_config(tmp_path, **TINY),
                                tool="hyperopt", algo="exhaustive", output_file="results/search.json")
    saved = _check_results(summary, 2)
    assert sorted(r["params"]["learning_rate"] for r in saved["trials"]) == [0.001, 0.01]
    # each trial saved its best epoch in its own folder and tested that checkpoint
    assert sorted(os.listdir(tmp_path / "saved")) == ["0", "1"]


def test_ray_tune_two_trials_on_cpu(tmp_path, in_tmp):
    pytest.importorskip("ray")
    space = write(tmp_path, "learning_rate choice [0.001,0.01]\n")
    config_dict = ml100k_config(tmp_path, **TINY, cpus_per_trial=1, gpus_per_trial=0)
    summary = tuning.run_search("SASRec", "ml-100k", space, config_dict=config_dict, tool="ray",
                                algo="exhaustive", output_file=str(tmp_path / "ray.json"))
    saved = _check_results(summary, 2)
    assert sorted(r["params"]["learning_rate"] for r in saved["trials"]) == [0.001, 0.01]
    assert os.path.isdir(tmp_path / "ray" / "ray")  # Ray Tune's own per-trial logs


def test_failed_trials_are_recorded_and_all_failed_is_an_error(tmp_path, in_tmp):
    space = write(tmp_path, "n_heads choice [3,5]\n")  # hidden_size 16 is no multiple of either
    with pytest.raises(tuning.AllTrialsFailed, match="every trial failed.*first error: ValueError"):
        tuning.run_search("SASRec", "ml-100k", space, config_dict=ml100k_config(tmp_path, **TINY),
                          tool="hyperopt", algo="exhaustive", output_file="failed.json")
    with open(tmp_path / "failed.json") as handle:
        saved = json.load(handle)
    assert saved["n_failed"] == 2 and saved["best"] is None
    assert all(r["status"] == "failed" and "multiple of the number of attention heads" in r["error"]
               for r in saved["trials"])
    assert "failed: ValueError" in (tmp_path / "failed.md").read_text()
