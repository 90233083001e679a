"""Trainers: RecBole's Trainer with safe checkpoints, resumable runs, history masking and model hooks.

* torch>=2.6 loads with ``weights_only=True`` by default, which rejects RecBole's own
  checkpoints; we load our own files with ``weights_only=False`` (they are trusted: we wrote them).
* Checkpoint names keep RecBole's ``<model>-<time>`` prefix plus the process id and a random
  suffix (:func:`recbole_mm.utils.run_stamp`), so runs started in the same second never share a
  file; every checkpoint is written atomically (temp file + rename).
* Resumable runs: after every epoch (with ``saved`` and ``save_last_state: true``) the complete
  training state goes to ``<checkpoint>-last.pth``: model, optimizer, next epoch, early-stopping
  counters, best validation result and every random state (Python, numpy, torch, CUDA, the training
  loader's shuffling generator, generators held by the model). ``resume_checkpoint(PATH)`` (config
  key ``resume``, ``--resume=PATH``) loads it and the run continues exactly as if never stopped (in
  one process; under DDP every rank restores rank 0's random state); a plain RecBole checkpoint
  resumes the RecBole way (weights, optimizer and epoch only).
* ``mask_history_items: true`` removes every item the user interacted with before the target
  (the target itself stays rankable) from full-sort evaluation; RecBole masks nothing but PAD
  for sequential models, which stays the default.
* Model hooks (all optional, see ``docs/architecture.md``): ``on_epoch_start(epoch)``,
  ``on_train_step_end()``, ``on_eval_start()``, ``optimizer_param_groups()``.
* Every trainer records what a benchmark needs to judge a run: ``valid_history`` (one entry per
  validation: epoch, score, metrics), ``epochs_run``, and, when ``target_ranks`` is set to a list
  before a full-sort evaluation, the rank of every evaluated target (see :meth:`training_summary`).
"""
import os
import random

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.evaluator import Collector
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_mm import distributed
from recbole_mm.data.dataset import TARGET_POSITION_FIELD
from recbole_mm.errors import ConfigError, UserPathError
from recbole_mm.utils import atomic_write, keep_freed_memory, run_stamp

RESUME_FORMAT = "recbole_mm-resume-state"
LAST_SUFFIX = "-last.pth"


def load_checkpoint(path, map_location=None):
    """``torch.load`` for recbole_mm/RecBole checkpoints (trusted, pickled config inside)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def last_state_path(checkpoint_file):
    """``<stem>-last.pth`` next to the best-epoch checkpoint ``<stem>.pth`` (the resumable state)."""
    stem = checkpoint_file[:-len(".pth")] if checkpoint_file.endswith(".pth") else checkpoint_file
    return stem + LAST_SUFFIX


def best_checkpoint_path(state_file):
    """Inverse of :func:`last_state_path`."""
    return state_file[:-len(LAST_SUFFIX)] + ".pth"


_GENERATORS = (torch.Generator, np.random.Generator)


def _model_generators(model):
    """Random generators a model holds (its own samplers), by dotted name: attributes of its
    modules, and attributes of plain helper objects those hold (e.g. MuSTRec's edge pruner)."""
    found = {}
    for prefix, module in model.named_modules():
        for name, value in vars(module).items():
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(value, _GENERATORS):
                found[path] = value
            elif not isinstance(value, (torch.nn.Module, torch.Tensor)) and hasattr(value, "__dict__"):
                for inner, held in vars(value).items():
                    if isinstance(held, _GENERATORS):
                        found[f"{path}.{inner}"] = held
    return found


def capture_random_state(model, train_data=None):
    """Every random state a training epoch draws from (see :func:`restore_random_state`)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
             "model": {name: (gen.get_state() if isinstance(gen, torch.Generator) else gen.bit_generator.state)
                       for name, gen in _model_generators(model).items()}}
    generator = getattr(train_data, "generator", None)
    state["train_data"] = generator.get_state() if isinstance(generator, torch.Generator) else None
    return state


def restore_random_state(state, model, train_data=None):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generators = _model_generators(model)
    for name, saved in state.get("model", {}).items():
        if name in generators:
            generator = generators[name]
            if isinstance(generator, torch.Generator):
                generator.set_state(saved)
            else:
                generator.bit_generator.state = saved
    generator = getattr(train_data, "generator", None)
    if state.get("train_data") is not None and isinstance(generator, torch.Generator):
        generator.set_state(state["train_data"])


class TopKCollector(Collector):
    """RecBole's collector with the ``rec.topk`` record built without a dense positive matrix.

    RecBole marks positives in a ``[batch, item_num]`` int matrix per batch, then gathers it at the
    top-k indices; here the top-k indices are compared with the (deduplicated) positive pairs
    directly, and the same top-k serves ``rec.items``. Same record, bit for bit (tested against
    RecBole's collector in tests/test_eval_speed.py); metrics that need the whole score row
    (``rec.meanrank``, ``rec.score``) take RecBole's path.
    """

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        need = self.register.need
        if need("rec.meanrank") or need("rec.score") or not (need("rec.topk") or need("rec.items")):
            return super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        _, topk_idx = torch.topk(scores_tensor, max(self.topk), dim=-1)
        if need("rec.items"):
            self.data_struct.update_tensor("rec.items", topk_idx)
        if need("rec.topk"):
            n_rows, n_items = scores_tensor.shape
            pairs = torch.unique(positive_u.to(topk_idx.device) * n_items + positive_i.to(topk_idx.device))
            rows, items = pairs // n_items, pairs % n_items
            pos_idx = torch.zeros_like(topk_idx, dtype=torch.int)
            pos_idx.index_put_((rows,), (topk_idx[rows] == items[:, None]).int(), accumulate=True)
            pos_len = torch.bincount(rows, minlength=n_rows).unsqueeze(1)  # int64, as RecBole's sum
            self.data_struct.update_tensor("rec.topk", torch.cat((pos_idx, pos_len), dim=1))
        if need("data.label"):
            self.label_field = self.config["LABEL_FIELD"]
            self.data_struct.update_tensor("data.label", interaction[self.label_field].to(self.device))


class SafeLoadMixin:
    """RecBole trainer additions: safe and collision-free checkpoints, resumable runs, history masking."""

    # distributed: DDP without device_ids on CPU, rank 0's checkpoint name (recbole_mm/distributed.py)
    def __init__(self, config, model):
        with distributed.defer_ddp(config) as is_distributed:
            super().__init__(config, model)
        if self.device.type == "cpu" and config["cpu_keep_freed_memory"] is not False:
            keep_freed_memory()
        if hasattr(self, "saved_model_file"):
            self.saved_model_file = os.path.join(self.checkpoint_dir, f"{config['model']}-{run_stamp()}.pth")
        self._pending_random_state = None  # set by resume_checkpoint, applied when its epoch starts
        self._resumed_stopped = False
        self._keep_last_state = False
        self._train_data = None
        self._fit_start_epoch = 0
        self._last_started_epoch = None
        distributed.setup_trainer(self, is_distributed)
        if type(getattr(self, "eval_collector", None)) is Collector:
            self.eval_collector = TopKCollector(config)
        self.valid_history = []  # one dict per validation: epoch, score and every metric
        self.epochs_run = 0
        self.target_ranks = None  # set to [] to record (user, item, rank) of each full-sort target

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.valid_history.append({"epoch": self.epochs_run - 1, "score": float(valid_score),
                                   **{key: float(value) for key, value in valid_result.items()}})
        return valid_score, valid_result

    def training_summary(self):
        """Epochs run, the best validation epoch (RecBole's rule: the last of equal scores) and
        whether patience stopped the run (False: it reached the ``epochs`` cap)."""
        best_epoch, best = None, None
        for entry in self.valid_history:
            better = best is None or (entry["score"] >= best if self.valid_metric_bigger else entry["score"] <= best)
            if better:
                best_epoch, best = entry["epoch"], entry["score"]
        return {"epochs_run": self.epochs_run, "best_epoch": best_epoch,
                "stopped_by_patience": self.cur_step > self.stopping_step,
                "valid_history": list(self.valid_history)}

    # ------------------------------------------------------------ checkpoints
    def _writes_files(self):
        return distributed.is_main_process(self.config)  # global rank 0: local_rank is 0 on every machine

    # distributed: no rank reads the checkpoint before rank 0 has written it
    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's best-epoch checkpoint, written atomically (a kill never leaves a torn file)."""
        if not isinstance(self, Trainer):  # RecBole's non-gradient trainers keep their own format
            result = super()._save_checkpoint(epoch, verbose=verbose, **kwargs)
            distributed.barrier(self.config)
            return result
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        if self._writes_files():
            state = {"config": self.config, "epoch": epoch, "cur_step": self.cur_step,
                     "best_valid_score": self.best_valid_score, "state_dict": self.model.state_dict(),
                     "other_parameter": self.model.other_parameter(), "optimizer": self.optimizer.state_dict()}
            atomic_write(saved_model_file, lambda handle: torch.save(state, handle, pickle_protocol=4))
            if verbose:
                self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")
        distributed.barrier(self.config)

    def _save_last_state(self, next_epoch, stopped=False):
        """The resumable state after ``next_epoch - 1`` epochs (one file, written atomically)."""
        state = {
            "format": RESUME_FORMAT, "model": self.config["model"], "dataset": self.config["dataset"],
            "next_epoch": next_epoch, "stopped": stopped, "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score, "best_valid_result": self.best_valid_result,
            "state_dict": self.model.state_dict(), "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "random_state": capture_random_state(self.model, self._train_data),
        }
        atomic_write(last_state_path(self.saved_model_file), lambda handle: torch.save(state, handle))

    def resume_checkpoint(self, resume_file):
        """Continue training from ``resume_file``: a ``-last.pth`` state (exact continuation), the
        checkpoint path a run printed (its ``-last.pth`` is used when present), or a plain RecBole
        checkpoint (weights, optimizer and epoch only, RecBole's behaviour)."""
        resume_file = str(resume_file)
        if not resume_file.endswith(LAST_SUFFIX) and os.path.isfile(last_state_path(resume_file)):
            resume_file = last_state_path(resume_file)
        if not os.path.isfile(resume_file):
            raise UserPathError(f"config key 'resume': no checkpoint at {resume_file}. Fix: pass the checkpoint "
                                "path a run printed, or its -last.pth file.")
        try:
            checkpoint = load_checkpoint(resume_file, map_location=self.device)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
            raise UserPathError(f"config key 'resume': cannot read {resume_file} ({type(err).__name__}: {err}). "
                                "Fix: pass a checkpoint written by recbole_mm or RecBole.") from None
        exact = isinstance(checkpoint, dict) and checkpoint.get("format") == RESUME_FORMAT
        saved_model = checkpoint["model"] if exact else checkpoint["config"]["model"]
        saved_dataset = checkpoint["dataset"] if exact else checkpoint["config"]["dataset"]
        if (saved_model.lower(), saved_dataset) != (self.config["model"].lower(), self.config["dataset"]):
            raise ConfigError(f"config key 'resume': {resume_file} is a {saved_model} run on '{saved_dataset}', "
                              f"not {self.config['model']} on '{self.config['dataset']}'. Fix: resume with the "
                              "command that started that run.")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if exact:
            self.start_epoch = checkpoint["next_epoch"]
            self.best_valid_result = checkpoint["best_valid_result"]
            self._pending_random_state = checkpoint["random_state"]
            self._resumed_stopped = checkpoint["stopped"]
            self.saved_model_file = best_checkpoint_path(resume_file)  # the same best-epoch file goes on
        else:
            self.start_epoch = checkpoint["epoch"] + 1
            self.saved_model_file = resume_file
        self.logger.info(f"Resume training from epoch {self.start_epoch} ({resume_file})")

    # ------------------------------------------------------------ training
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        extra = {"callback_fn": callback_fn} if callback_fn is not None else {}
        if not isinstance(self, Trainer):  # RecBole's non-gradient trainers: their own loop, nothing to resume
            return super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                               **extra)
        self._train_data = train_data
        self._keep_last_state = (saved and isinstance(self, Trainer) and self._writes_files()
                                 and self.config["save_last_state"] is not False)
        self._fit_start_epoch, self._last_started_epoch = self.start_epoch, None
        if self._resumed_stopped or (self._pending_random_state is not None and self.start_epoch >= self.epochs):
            # the saved run had finished (early stop, or no epoch left): nothing to train, and
            # RecBole's fit would overwrite the best checkpoint with the last weights
            return self.best_valid_score, self.best_valid_result
        result = super().fit(train_data, valid_data, verbose=verbose, saved=saved, show_progress=show_progress,
                             **extra)
        if self._keep_last_state and self._last_started_epoch is not None:
            stopped = self._last_started_epoch < self.epochs - 1  # RecBole's loop broke: early stopping
            self._save_last_state(self._last_started_epoch + 1, stopped=stopped)
        return result

    def _epoch_boundary(self, epoch_idx):
        """Start of epoch ``epoch_idx``, before anything of it ran: save the resumable state of the
        epochs so far, or restore the random state of a resumed run. Idempotent per epoch."""
        if epoch_idx == self._last_started_epoch:
            return
        self._last_started_epoch = epoch_idx
        if self._pending_random_state is not None:
            restore_random_state(self._pending_random_state, self.model, self._train_data)
            self._pending_random_state = None
        elif self._keep_last_state and epoch_idx > self._fit_start_epoch:
            self._save_last_state(epoch_idx)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._epoch_boundary(epoch_idx)
        self.epochs_run = epoch_idx + 1
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return None
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        self._eval_dataset = eval_data._dataset
        if hasattr(self.model, "on_eval_start"):
            self.model.on_eval_start()
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _full_sort_batch_eval(self, batched_data):
        interaction, history_index, positive_u, positive_i = batched_data
        if (
            self.config["mask_history_items"]
            and history_index is None
            and isinstance(interaction, Interaction)
            and TARGET_POSITION_FIELD in interaction
        ):
            history_index = self._eval_dataset.history_before(
                interaction[self.config["USER_ID_FIELD"]].cpu(), interaction[TARGET_POSITION_FIELD].cpu()
            )
            history_index = tuple(index.to(self.device) for index in history_index)
        result = super()._full_sort_batch_eval((interaction, history_index, positive_u, positive_i))
        if self.target_ranks is not None:
            self._record_target_ranks(*result)
        return result

    def _record_target_ranks(self, interaction, scores, positive_u, positive_i):
        """Rank of each target among all items (1 = top; ties counted in the target's favour),
        with the row's user id: per-user metrics for paired tests and item-subset studies."""
        target_scores = scores[positive_u, positive_i]
        ranks = (scores[positive_u] > target_scores[:, None]).sum(dim=1) + 1
        users = interaction[self.config["USER_ID_FIELD"]].to(positive_u.device)[positive_u]
        self.target_ranks.append((users.cpu(), positive_i.cpu(), ranks.cpu()))


_SAFE_CLASSES = {}


def make_safe_trainer(trainer_class):
    """Subclass of any RecBole trainer class with :class:`SafeLoadMixin` behaviour."""
    if issubclass(trainer_class, SafeLoadMixin):
        return trainer_class
    if trainer_class not in _SAFE_CLASSES:
        _SAFE_CLASSES[trainer_class] = type(f"Safe{trainer_class.__name__}", (SafeLoadMixin, trainer_class), {})
    return _SAFE_CLASSES[trainer_class]


def fused_twin(optimizer):
    """The same Adam/AdamW (same parameter groups and settings) with ``fused=True``: one pass over
    each tensor, about 10x faster per step on CPU for large trainable tables such as MuSTRec's
    7,050 x 4,096 image features (docs/benchmarks/mustrec.md). Same update rule up to float
    rounding. Any other optimizer, or one torch cannot fuse (sparse or non-float parameters, a
    device without the kernel), is returned as it is.
    """
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return optimizer
    groups = [{k: v for k, v in group.items() if k not in ("fused", "foreach")} for group in optimizer.param_groups]
    if any(p.is_sparse or not p.is_floating_point() for group in groups for p in group["params"]):
        return optimizer
    try:
        return type(optimizer)(groups, fused=True)
    except (RuntimeError, ValueError, TypeError):  # device or dtype without a fused kernel
        return optimizer


class MMTrainer(SafeLoadMixin, Trainer):
    """Default trainer of recbole_mm models: RecBole's loop plus the model hooks.

    ``fused_optimizer: true`` (default) swaps the Adam/AdamW RecBole builds for its fused twin;
    other learners, and ``fused_optimizer: false``, keep RecBole's optimizer.
    """

    def _build_optimizer(self, **kwargs):
        if "params" not in kwargs and hasattr(self.model, "optimizer_param_groups"):
            kwargs["params"] = self.model.optimizer_param_groups()
        optimizer = super()._build_optimizer(**kwargs)
        if self.config["fused_optimizer"] is not False:
            optimizer = fused_twin(optimizer)
        if hasattr(self.model, "on_train_step_end"):  # torch's own hook: runs after every step()
            optimizer.register_step_post_hook(lambda *_: self.model.on_train_step_end())
        return optimizer

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self._epoch_boundary(epoch_idx)  # before the hook below changes any state of the epoch
        if hasattr(self.model, "on_epoch_start"):
            self.model.on_epoch_start(epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
