"""Local training and evaluation of an intent model on one node's examples.

``train`` runs a few epochs of SGD on binary cross-entropy. With a ``DPConfig`` it runs DP-SGD
through Opacus instead: Poisson-sampled batches, every example's gradient clipped to
``max_grad_norm`` and Gaussian noise calibrated (RDP accountant) so that the whole call is
(epsilon, delta)-DP for each example, i.e. each customer. FedProx's proximal term is applied
as a separate step towards the global weights after each optimiser step: it depends on no
example, so it costs no privacy and works the same with and without DP.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fl.metrics import roc_auc


class TrainingError(ValueError):
    """Training cannot run as configured (no examples, bad privacy parameters)."""


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD for one call of ``train``: (epsilon, delta) per customer."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise TrainingError("the per-round epsilon must be positive")
        if not 0 < self.delta < 1:
            raise TrainingError("delta must be in (0, 1)")
        if not self.max_grad_norm > 0:
            raise TrainingError("max_grad_norm must be positive")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 0.1
    batch_size: int = 64
    proximal_mu: float = 0.0  # FedProx; 0 is FedAvg's plain local SGD
    dp: DPConfig | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 1000 or not self.lr > 0 or not self.batch_size >= 1:
            raise TrainingError("epochs must be 1..1000, lr positive and batch_size >= 1")
        if self.proximal_mu < 0:
            raise TrainingError("proximal_mu must not be negative")


@dataclass(frozen=True)
class TrainResult:
    examples: int
    loss: float  # mean training loss of the last epoch
    epsilon: float  # privacy spent per customer by this call (0 without DP)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig,
          seed: int = 0) -> TrainResult:
    """Train ``model`` in place on (``x``, ``y``)."""
    if len(x) == 0:
        raise TrainingError("no examples to train on")
    torch.set_num_threads(1)  # tiny models: one thread is fastest and shares the CPU fairly
    torch.manual_seed(seed)
    data = TensorDataset(torch.as_tensor(x), torch.as_tensor(y))
    loader = DataLoader(data, batch_size=min(config.batch_size, len(data)), shuffle=True)
    optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    anchor = [p.detach().clone() for p in model.parameters()]
    if config.dp is not None:
        model, optimizer, loader = _private(model, optimizer, loader, config)
    params = list(model.parameters())
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    with warnings.catch_warnings():
        # Opacus's hooks fire on outputs when inputs need no gradient: expected here.
        warnings.filterwarnings("ignore", message="Full backward hook")
        last = _epochs(model, optimizer, loader, loss_fn, params, anchor, config)
    return TrainResult(len(x), last, config.dp.epsilon if config.dp else 0.0)


def _epochs(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
            loss_fn: nn.Module, params: Sequence[torch.Tensor],
            anchor: Sequence[torch.Tensor],
            config: TrainConfig) -> float:
    last = 0.0
    for _ in range(config.epochs):
        total, seen = 0.0, 0
        for xb, yb in loader:
            if len(xb) == 0:  # Poisson sampling can draw an empty batch
                continue
            optimizer.zero_grad()
            loss = loss_fn(model(xb).squeeze(-1), yb)
            loss.backward()
            optimizer.step()
            if config.proximal_mu:
                with torch.no_grad():
                    for p, g in zip(params, anchor, strict=True):
                        p.sub_(config.lr * config.proximal_mu * (p - g))
            total += float(loss.detach()) * len(xb)
            seen += len(xb)
        last = total / max(seen, 1)
    return last


def _private(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
             config: TrainConfig) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    from opacus import PrivacyEngine  # heavy import, only when DP is on

    dp = config.dp
    assert dp is not None
    if dp.delta >= 1 / len(loader.dataset):  # type: ignore[arg-type]
        raise TrainingError(f"delta {dp.delta:g} is not below 1/n for {len(loader.dataset)} "  # type: ignore[arg-type]
                            "examples; use a smaller delta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "secure RNG off": the noise is still calibrated
        engine = PrivacyEngine(accountant="rdp")
        # What make_private_with_epsilon does, with the calibration cached: the RDP search
        # takes seconds and every round of a run asks for the same noise.
        noise = noise_multiplier(dp.epsilon, dp.delta, 1 / len(loader), config.epochs)
        return engine.make_private(  # type: ignore[no-any-return]
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
            max_grad_norm=dp.max_grad_norm)


#: A JSON file remembering calibrations across processes (each of a node's ClientApp messages
#: is a fresh process, and the search takes seconds); set by ``agent_node.training``.
CALIBRATION_CACHE: Path | None = None


@functools.lru_cache(maxsize=256)
def noise_multiplier(epsilon: float, delta: float, sample_rate: float, epochs: int) -> float:
    """The Gaussian noise multiplier making ``epochs`` of Poisson-sampled DP-SGD at
    ``sample_rate`` (epsilon, delta)-DP under Opacus's RDP accountant."""
    key = f"{epsilon!r}|{delta!r}|{sample_rate!r}|{epochs}"
    cache = _read_cache()
    if key in cache:
        return float(cache[key])
    found = _calibrate(epsilon, delta, sample_rate, epochs)
    if CALIBRATION_CACHE is not None:  # a deterministic function of the key: safe to keep
        cache[key] = found
        tmp = CALIBRATION_CACHE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(CALIBRATION_CACHE)
    return found


def _read_cache() -> dict[str, float]:
    if CALIBRATION_CACHE is None or not CALIBRATION_CACHE.exists():
        return {}
    try:
        found = json.loads(CALIBRATION_CACHE.read_text())
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _calibrate(epsilon: float, delta: float, sample_rate: float, epochs: int) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    try:
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                          sample_rate=sample_rate, epochs=epochs,
                                          accountant="rdp"))
    except ValueError:  # Opacus: "The privacy budget is too low."
        raise TrainingError(f"a per-round epsilon of {epsilon:g} is below what DP-SGD can "
                            f"reach at delta {delta:g} (RDP accountant); spend more per "
                            "round or train fewer rounds") from None


@dataclass(frozen=True)
class Evaluation:
    examples: int
    loss: float
    auc: float | None  # None when one class is absent


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Evaluation:
    torch.set_num_threads(1)
    model.eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(x)).squeeze(-1)
        loss = float(nn.functional.binary_cross_entropy_with_logits(logits, torch.as_tensor(y)))
        scores = torch.sigmoid(logits).numpy()
    return Evaluation(len(x), loss, roc_auc(y, scores))
