"""recbole_mm models: one model per module; the registry finds them by class name.

Importing RecBole's sequential models runs its ``sine.py``, which switches autograd anomaly
detection on for the whole process (every op then records a stack trace: training about 2x
slower). Every path to a model, ours or RecBole's, passes through this package first (the
registry imports it before any RecBole model), so the import is done once here and the switch
turned back off.
"""
import recbole.model.sequential_recommender  # noqa: F401
import torch

torch.autograd.set_detect_anomaly(False)
