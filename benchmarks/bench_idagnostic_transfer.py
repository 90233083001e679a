"""Transfer benchmark of IDAgnosticMMSR (``pretrained_checkpoint``): source ml-100k -> target scientific.

IDAgnosticMMSR has no item-ID embedding, so a checkpoint trained on one dataset loads strictly
into the model of another. This script trains a source model on RecBole's bundled ``ml-100k``
(item text ``title (year). Genres: ...`` from ``dataset/ml-100k/item_text.tsv``), then trains on
the target ``scientific`` (a) from scratch and (b) initialised from the source checkpoint, with
the same seed, data order and budget. Every run goes through
``recbole_mm.quick_start.run_recbole_mm``; the script only wraps three of its module-level
helpers to (1) check right after construction that the target model holds the source weights,
(2) evaluate the test split after every epoch (full sort, not used for model selection), and
(3) split the test rows into cold / warm targets (Li et al. 2023 Table 8: target seen fewer than
``--cold_threshold`` times in the training split), as in ``benchmarks/bench_idagnostic.py``.

Settings shared by all runs = the "MMSR-T k=0" run of docs/results/idagnostic.md: text only,
MiniLM-L6 frozen (token outputs cached per item), SASRec 2 x 2 heads, d 64, FFN 256, AdamW
lr 1e-3, wd 0.1, batch 64, no lr decay, validation every epoch (Hit@10), seed 2020.

Commands (one core; run from a scratch folder so RecBole's log/ goes there)::

    # SCRATCH: any scratch folder
    mkdir -p SCRATCH/transfer/run && cd SCRATCH/transfer/run
    B=<repository>/benchmarks/bench_idagnostic_transfer.py  # DATA = the folder holding scientific/
    export OMP_NUM_THREADS=1 OUT=SCRATCH/transfer/results.jsonl
    # source: every prefix row (ml-100k users have ~100 items; the default trains on the last 20 only)
    python $B --runs source --source_epochs 2 --source_config '{"dense_train_last_only": false}' --out $OUT
    python $B --data_path DATA --runs scratch transfer --epochs 3 --out $OUT                      # seed 2020
    python $B --data_path DATA --runs scratch transfer --epochs 3 --config '{"seed": 2021}' --out $OUT
    python $B --data_path DATA --runs scratch transfer --epochs 3 --config '{"seed": 2022}' --out $OUT
    python $B --data_path DATA --runs scratch transfer --epochs 25 --config '{"stopping_step": 5}' --out $OUT
    # a 1-epoch run trains exactly epoch 1 of the longer runs of the same seed (no lr schedule;
    # the per-epoch test pass restores torch's RNG state):
    python $B --data_path DATA --runs scratch transfer --epochs 1 --out $OUT

``--runs transfer`` uses ``--source_ckpt`` or else the checkpoint of the last ``source`` line
of ``--out``. One JSON line per run is appended to ``--out``.
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch

from bench_idagnostic import hit_ndcg, ranks_of_targets  # same ranking and metrics
from common import REPO, MissingFileError, append_record, data_overrides, data_root, run_entry_point, scratch_dir

COMMON = {
    "modalities": ["text"],
    "n_finetune_blocks_text": 0,
    "lr_step_epoch": None,
    "embedding_size": 64,
    "inner_size": 256,
    "learning_rate": 0.001,
    "eval_step": 1,
    "stopping_step": 10,
    "show_progress": False,
}


class Probe:
    """Wraps quick_start's helpers for one run and collects what run_recbole_mm does not return."""

    def __init__(self, cold_threshold, per_epoch_test):
        self.cold_threshold, self.per_epoch_test = cold_threshold, per_epoch_test
        self.model = self.train_data = self.test_data = self.counts = self.seed = None
        self.epoch_s, self.per_epoch, self.load_check, self.build_s = [], [], None, None
        self.trainer = None

    def subsets(self):
        """Test HR/NDCG@10 on all / cold / warm rows. Iterating a DataLoader draws from torch's
        global RNG, so its state is restored: training is the same as without this probe."""
        rng = torch.get_rng_state()
        try:
            ranks, targets = ranks_of_targets(self.model, self.test_data, self.model.device)
        finally:
            torch.set_rng_state(rng)
        if self.counts is None:
            counts = np.asarray(self.train_data._dataset.train_interaction_matrix().sum(0)).ravel()
            self.counts = counts
        cold = torch.from_numpy(self.counts[targets.numpy()] < self.cold_threshold)
        return {"all": hit_ndcg(ranks), "cold": hit_ndcg(ranks[cold]), "warm": hit_ndcg(ranks[~cold])}

    def install(self):
        from recbole_mm import quick_start, registry

        probe = self
        orig_prep, orig_build, orig_get_trainer = (quick_start.data_preparation, quick_start._build_model,
                                                   registry.get_trainer)

        def data_preparation(config, dataset):
            out = orig_prep(config, dataset)
            probe.train_data, _, probe.test_data = out
            return out

        def build_model(config, train_data):
            start = time.time()
            model = orig_build(config, train_data)
            probe.build_s = round(time.time() - start, 1)
            probe.model, probe.seed = model, config["seed"]
            path = config["pretrained_checkpoint"]
            if path:
                probe.load_check = check_loaded(model, path, config, train_data, orig_build)
            if probe.per_epoch_test:  # epoch 0: the untrained (scratch) / source-only (transfer) model
                start = time.time()
                probe.per_epoch.append({"epoch": 0, **probe.subsets(), "test_eval_s": round(time.time() - start, 1)})
            return model

        def get_trainer(model_type, model_name):
            base = orig_get_trainer(model_type, model_name)

            class Timed(base):
                def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
                    probe.trainer = self
                    start = time.time()
                    out = super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
                    probe.epoch_s.append(round(time.time() - start, 1))
                    if probe.per_epoch_test:
                        start = time.time()
                        row = {"epoch": epoch_idx + 1, **probe.subsets()}
                        row["test_eval_s"] = round(time.time() - start, 1)
                        probe.per_epoch.append(row)
                    return out

            Timed.__name__ = base.__name__
            return Timed

        quick_start.data_preparation, quick_start._build_model = data_preparation, build_model
        registry.get_trainer = get_trainer
        self._restore = lambda: (setattr(quick_start, "data_preparation", orig_prep),
                                 setattr(quick_start, "_build_model", orig_build),
                                 setattr(registry, "get_trainer", orig_get_trainer))

    def uninstall(self):
        self._restore()


def check_loaded(model, path, config, train_data, orig_build):
    """Right after construction: every tensor equals the checkpoint's, and the trainable ones
    differ from a scratch model built with the same seed (so the load is not a no-op)."""
    from recbole_mm.trainer import load_checkpoint

    state = load_checkpoint(path, map_location="cpu")["state_dict"]
    mine = model.state_dict()
    max_diff = max((mine[k].float().cpu() - v.float()).abs().max().item() for k, v in state.items())
    scratch_cfg = config
    saved, scratch_cfg["pretrained_checkpoint"] = config["pretrained_checkpoint"], None
    try:
        scratch = orig_build(scratch_cfg, train_data).state_dict()
    finally:
        scratch_cfg["pretrained_checkpoint"] = saved
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    differ = [n for n in trainable if not torch.equal(scratch[n].cpu(), mine[n].cpu())]
    name = trainable[0]
    return {"keys_in_checkpoint": len(state), "keys_in_model": len(mine),
            "max_abs_diff_model_vs_checkpoint": max_diff,
            "trainable_tensors": len(trainable), "trainable_tensors_differing_from_scratch_init": len(differ),
            "example": {"tensor": name, "checkpoint_sum": round(float(state[name].float().sum()), 6),
                        "model_sum": round(float(mine[name].float().sum()), 6),
                        "scratch_init_sum": round(float(scratch[name].float().sum()), 6)}}


def run_one(name, dataset, overrides, args):
    from recbole_mm.quick_start import run_recbole_mm

    ckpt_dir = os.path.join(args.work, "ckpt", f"{name}-{time.strftime('%H%M%S')}")
    os.makedirs(ckpt_dir, exist_ok=True)
    config = {**COMMON, **overrides, "checkpoint_dir": ckpt_dir}
    probe = Probe(args.cold_threshold, per_epoch_test=(dataset == args.target))
    probe.install()
    start = time.time()
    try:
        result = run_recbole_mm(model="IDAgnosticMMSR", dataset=dataset, config_dict=config, saved=True)
    finally:
        probe.uninstall()
    wall = round(time.time() - start, 1)
    saved = sorted(glob.glob(os.path.join(ckpt_dir, "IDAgnosticMMSR-*.pth")), key=os.path.getmtime)
    row = {
        "run": name, "dataset": dataset, "config": {k: v for k, v in config.items() if k != "show_progress"},
        "seed": probe.seed,
        "wall_s": wall, "build_s": probe.build_s, "epoch_s": probe.epoch_s,
        "checkpoint": saved[-1] if saved else None,
        "best_valid": {k: float(v) for k, v in dict(result["best_valid_result"] or {}).items()},
        "recbole_test_at_best_valid": {k: float(v) for k, v in dict(result["test_result"] or {}).items()},
        "load_check": probe.load_check,
    }
    if dataset == args.target:
        row["test_per_epoch_pessimistic_ties"] = probe.per_epoch
        row["best_valid_subsets_pessimistic_ties"] = probe.subsets()  # model holds the best weights now
    append_record(args.out, row, indent=1)
    return row


def last_source_ckpt(out):
    if not os.path.isfile(out):
        return None
    ckpt = None
    with open(out) as f:
        for line in f:
            row = json.loads(line)
            if row.get("run") == "source" and row.get("checkpoint"):
                ckpt = row["checkpoint"]
    return ckpt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["source", "scratch", "transfer"],
                        choices=["source", "scratch", "transfer"])
    parser.add_argument("--source", default="ml-100k")
    parser.add_argument("--source_data_path", default=None, help="~ = RecBole's bundled copy (ml-100k)")
    parser.add_argument("--source_epochs", type=int, default=2)
    parser.add_argument("--source_config", default="{}", help="JSON overrides for the source run only")
    parser.add_argument("--target", default="scientific")
    parser.add_argument("--data_path", default=None, help="folder holding the target dataset's folder")
    parser.add_argument("--epochs", type=int, default=3, help="target budget (epochs)")
    parser.add_argument("--config", default="{}", help="JSON overrides for every run")
    parser.add_argument("--source_ckpt", default=None)
    parser.add_argument("--cold_threshold", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=scratch_dir("transfer"), help="checkpoints go to WORK/ckpt/")
    parser.add_argument("--out", default="transfer_results.jsonl")
    args = parser.parse_args()
    target_data = data_overrides(args, args.target) if {"scratch", "transfer"} & set(args.runs) else {}
    torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    extra = json.loads(args.config)
    if "source" in args.runs:
        src = {"epochs": args.source_epochs, **extra, **json.loads(args.source_config)}
        if args.source == "ml-100k":  # its text file lives in the repository's dataset/ml-100k
            src.setdefault("mm_feature_path", os.path.join(REPO, "dataset", "ml-100k"))
        source_root = data_root(args.source_data_path, args.source)
        if source_root:
            src["data_path"] = source_root
        row = run_one("source", args.source, src, args)
        args.source_ckpt = args.source_ckpt or row["checkpoint"]
    target = {"epochs": args.epochs, **target_data, **extra}
    if "scratch" in args.runs:
        run_one("scratch", args.target, target, args)
    if "transfer" in args.runs:
        ckpt = args.source_ckpt or last_source_ckpt(args.out)
        if not ckpt:
            raise MissingFileError(f"no source checkpoint: pass --source_ckpt or run --runs source first "
                                   f"(--out {args.out} has no source row)")
        run_one("transfer", args.target, {**target, "pretrained_checkpoint": ckpt}, args)


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
