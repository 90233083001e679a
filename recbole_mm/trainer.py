"""Trainers: RecBole's Trainer with safe checkpoint loading, history masking and model hooks.

* torch>=2.6 loads with ``weights_only=True`` by default, which rejects RecBole's own
  checkpoints; we load our own files with ``weights_only=False`` (they are trusted: we wrote them).
* ``mask_history_items: true`` removes every item the user interacted with before the target
  (the target itself stays rankable) from full-sort evaluation; RecBole masks nothing but PAD
  for sequential models, which stays the default.
* Model hooks (all optional, see ``docs/architecture.md``): ``on_epoch_start(epoch)``,
  ``on_train_step_end()``, ``on_eval_start()``, ``optimizer_param_groups()``.
* Every trainer records what a benchmark needs to judge a run: ``valid_history`` (one entry per
  validation: epoch, score, metrics), ``epochs_run``, and, when ``target_ranks`` is set to a list
  before a full-sort evaluation, the rank of every evaluated target (see :meth:`training_summary`).
"""
import torch
from recbole.data.interaction import Interaction
from recbole.trainer import Trainer

from recbole_mm.data.dataset import TARGET_POSITION_FIELD


def load_checkpoint(path, map_location=None):
    """``torch.load`` for recbole_mm/RecBole checkpoints (trusted, pickled config inside)."""
    return torch.load(path, map_location=map_location, weights_only=False)


class SafeLoadMixin:
    """Checkpoint loading that works on torch>=2.6, plus optional history masking."""

    # distributed: DDP without device_ids on CPU, rank 0's checkpoint name (recbole_mm/distributed.py)
    def __init__(self, config, model):
        from recbole_mm import distributed

        with distributed.defer_ddp(config) as is_distributed:
            super().__init__(config, model)
        distributed.setup_trainer(self, is_distributed)
        self.valid_history = []  # one dict per validation: epoch, score and every metric
        self.epochs_run = 0
        self.target_ranks = None  # set to [] to record (user, item, rank) of each full-sort target

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.epochs_run = epoch_idx + 1
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)

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

    # distributed: no rank reads the checkpoint before rank 0 has written it
    def _save_checkpoint(self, *args, **kwargs):
        from recbole_mm.distributed import barrier

        result = super()._save_checkpoint(*args, **kwargs)
        barrier(self.config)
        return result

    def resume_checkpoint(self, resume_file):
        original = torch.load
        try:
            torch.load = lambda *a, **k: original(*a, **{**k, "weights_only": False})
            return super().resume_checkpoint(resume_file)
        finally:
            torch.load = original

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
        return optimizer if self.config["fused_optimizer"] is False else fused_twin(optimizer)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if hasattr(self.model, "on_epoch_start"):
            self.model.on_epoch_start(epoch_idx)
        if not hasattr(self.model, "on_train_step_end"):
            return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        optimizer_step = self.optimizer.step

        def step_then_hook(*args, **kwargs):
            result = optimizer_step(*args, **kwargs)
            self.model.on_train_step_end()
            return result

        self.optimizer.step = step_then_hook
        try:
            return super()._train_epoch(train_data, epoch_idx, loss_func, show_progress)
        finally:
            del self.optimizer.step  # back to the class method
