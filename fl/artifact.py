"""A trained intent model as one hashable document, what the ledger's ``model`` entry names.

The artifact holds the signed run plan (features, model kind, privacy settings), the scaling
statistics and the final weights. Its hash is SHA-256 over its RFC 8785 canonical JSON
(``consent.canonical``), so the coordinator that registers it and a node that scores with it
compute the same digest; a node uses a model only when the ledger holds a ``model`` entry with
that digest signed by the coordinator (``agent_node.scoring``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from consent.canonical import canonicalize

ARTIFACT_TYPE = "IntentModel"


class ArtifactError(ValueError):
    """The file is not a model artifact, or its weights do not fit its plan."""


def make_artifact(plan_document: dict[str, Any], run_id: int | str,
                  state: dict[str, Any], scaling: dict[str, list[float]]) -> dict[str, Any]:
    weights = {name: {"shape": list(np.shape(value)),
                      "values": [float(v) for v in np.asarray(value, dtype=float).ravel()]}
               for name, value in sorted(state.items())}
    return {"type": ARTIFACT_TYPE, "v": 1, "run_id": str(run_id), "plan": plan_document,
            "scaling": {"mean": [float(v) for v in scaling["mean"]],
                        "std": [float(v) for v in scaling["std"]]},
            "weights": weights}


def digest(artifact: dict[str, Any]) -> str:
    return hashlib.sha256(canonicalize(artifact)).hexdigest()


def weights_of(artifact: dict[str, Any]) -> dict[str, np.ndarray]:
    try:
        return {name: np.asarray(w["values"], dtype=np.float32).reshape(w["shape"])
                for name, w in artifact["weights"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"the model's weights are malformed ({exc})") from None


def save(artifact: dict[str, Any], path: Path) -> str:
    Path(path).write_text(json.dumps(artifact), encoding="utf-8")
    return digest(artifact)


def load(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a readable model file ({exc})") from None
    if not isinstance(found, dict) or found.get("type") != ARTIFACT_TYPE:
        raise ArtifactError(f"{path} is not an {ARTIFACT_TYPE} document")
    return found
