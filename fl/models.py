"""Intent models for tabular CRM data: logistic regression and a small MLP (PyTorch, CPU).

Both are built only from layers Opacus computes per-example gradients for (``Linear``,
``ReLU``), so the same model trains with and without DP-SGD. Parameters travel as a plain
``{name: ndarray}`` state (what Flower's ``ArrayRecord`` carries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

KINDS = ("logreg", "mlp")


class ModelSpecError(ValueError):
    """An unknown model kind or a bad size."""


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "logreg"
    hidden: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModelSpecError(f"model kind {self.kind!r} is unknown: use one of "
                                 f"{', '.join(KINDS)}")
        if not 1 <= self.hidden <= 1024:
            raise ModelSpecError("hidden must be between 1 and 1024 units")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "hidden": self.hidden}


def build(spec: ModelSpec, width: int, seed: int = 0) -> nn.Module:
    """A fresh model over ``width`` inputs giving one logit; ``seed`` fixes its init so every
    party starting from the same seed starts from the same weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if spec.kind == "logreg":
            return nn.Sequential(nn.Linear(width, 1))
        return nn.Sequential(nn.Linear(width, spec.hidden), nn.ReLU(), nn.Linear(spec.hidden, 1))
    finally:
        torch.random.set_rng_state(generator_state)


def get_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters as numpy arrays, by name (a copy)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in _plain(model).state_dict().items()}


def set_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load parameters; refuses a state whose names or shapes differ from the model's."""
    own = _plain(model).state_dict()
    if set(own) != set(state) or any(tuple(own[k].shape) != tuple(np.shape(state[k]))
                                     for k in own):
        raise ModelSpecError("the parameters do not fit this model (names or shapes differ);"
                             " the run's model spec and features must match the node's")
    _plain(model).load_state_dict({k: torch.as_tensor(np.asarray(v, dtype=np.float32))
                                   for k, v in state.items()})


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Scores in [0, 1] for the rows of ``x``."""
    with torch.no_grad():
        return torch.sigmoid(model(torch.as_tensor(x)).squeeze(-1)).numpy()


def _plain(model: nn.Module) -> nn.Module:
    """The module itself, also when Opacus wrapped it (GradSampleModule keeps ``_module``)."""
    return getattr(model, "_module", model)
