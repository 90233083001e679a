"""Time the official MuSTRec code's training step (run by ``bench_mustrec_vs_official.py steps``).

Runs inside a CPU-patched copy of the official code (docs/benchmarks/mustrec.md lists the
patches), from its ``src/`` folder, with that copy's Python:

    cd OFFICIAL/src && python /path/to/benchmarks/official_mustrec_step.py --batches 20 --threads 1

The official ``quick_start`` builds everything for MuSTRec on ``baby`` as its ``main.py`` does
(released settings; only ``use_gpu: False`` and ``data_path: ../data/`` overridden) and its
trainer's ``_train_epoch`` runs unchanged. The trainer's optimizer is wrapped to read the clock:
a step starts at ``zero_grad()`` (the first statement of each batch) and ends when ``step()``
returns, so it covers both losses, the backward pass and Adam, as ``bench_mustrec.py`` times
ours. Batch 0 is a warm-up; after ``--batches`` more the run is stopped. ``--stubs`` is a folder
put first on ``sys.path`` (no-op ``wandb`` and ``torchvision`` modules). Prints one line
``STEP_JSON {...}``.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time


class EnoughBatches(Exception):
    pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="timed batches after one warm-up batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stubs", default=os.path.join("..", "..", "stubs"),
                        help="folder of stub modules put first on sys.path")
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))  # benchmarks/ has a common.py; the official code a common/
    sys.path[:] = [os.path.abspath(args.stubs), os.getcwd()] + [p for p in sys.path if os.path.abspath(p or ".") != here]
    import torch
    torch.set_num_threads(args.threads)
    import common.trainer as official_trainer
    from utils.quick_start import quick_start

    marks = {"start": [], "end": [], "losses": []}
    build = official_trainer.Trainer.__init__

    def build_and_wrap(self, *a, **k):
        build(self, *a, **k)
        marks["trainer"] = self
        optimizer = self.optimizer
        zero_grad, step = optimizer.zero_grad, optimizer.step

        def timed_zero_grad(*za, **zk):
            marks["start"].append((time.perf_counter(), time.process_time()))
            return zero_grad(*za, **zk)

        def timed_step(*sa, **sk):
            out = step(*sa, **sk)
            marks["end"].append((time.perf_counter(), time.process_time()))
            if len(marks["end"]) > args.batches:
                raise EnoughBatches
            return out

        optimizer.zero_grad, optimizer.step = timed_zero_grad, timed_step

    official_trainer.Trainer.__init__ = build_and_wrap
    train_epoch = official_trainer.Trainer._train_epoch

    def counting_train_epoch(self, train_data, epoch_idx, loss_func=None):
        marks["batches_per_epoch"], marks["batch_size"] = len(train_data), train_data.batch_size
        return train_epoch(self, train_data, epoch_idx, loss_func)

    official_trainer.Trainer._train_epoch = counting_train_epoch
    try:
        quick_start(model="MuSTRec", dataset="baby", config_dict={"gpu_id": 0, "use_gpu": False, "data_path": "../data/"},
                    save_model=True, mg=False)
        raise RuntimeError(f"the official run ended before {args.batches + 1} batches")
    except EnoughBatches:
        pass
    pairs = list(zip(marks["start"], marks["end"]))[1:]  # batch 0: warm-up
    wall = [end[0] - start[0] for start, end in pairs]
    cpu = [end[1] - start[1] for start, end in pairs]
    record = {"code": "official", "threads": torch.get_num_threads(), "batch_size": marks["batch_size"],
              "batches_per_epoch": marks["batches_per_epoch"], "measured_steps": len(wall),
              "step_s": statistics.mean(wall), "step_cpu_s": statistics.mean(cpu),
              "parameters": sum(p.numel() for g in marks["trainer"].optimizer.param_groups for p in g["params"]),
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
    print("STEP_JSON " + json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
