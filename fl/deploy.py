"""Flower's deployment engine as both ends run it: environment, SuperNode keys, the app.

The coordinator (``coordinator.flower``) runs a SuperLink and submits runs with ``flwr run``;
each node (``agent_node.flnode``) runs a SuperNode beside its gRPC service. What both sides
must agree on lives here:

* ``flower_env``: telemetry and update checks off, runtime dependency installation off (the
  app's code is this installed package, never fetched), ``FLWR_HOME`` explicit, and the
  SuperExec task poll interval shortened;
* SuperNode authentication keys: ECDSA P-384 in OpenSSH encoding, the only form Flower 1.41
  reads (``flwr supernode register`` and ``--auth-supernode-private-key``). A node signs the
  public key into its ``NodeRegistration`` (``flower_key``), so the coordinator registers with
  its SuperLink exactly the keys of the nodes in its registry;
* the Flower app (FAB) ``flwr run`` ships: only a ``pyproject.toml`` naming the ServerApp
  (``coordinator.training:app``) and the ClientApp (``agent_node.training:app``) of this
  package, plus the run config keys and their defaults.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

KEY_PREFIX = "ecdsa-sha2-nistp384 "
APP_NAME = "sovintent"
#: Run config keys of the app and their defaults (``flwr run`` refuses unknown keys).
RUN_CONFIG: dict[str, Any] = {
    "plan": "", "result-dir": "", "strategy": "fedavg", "rounds": 3, "proximal-mu": 0.1,
    "min-nodes": 2, "node-wait": 30.0, "round-timeout": 120.0, "poll": 0.2,
    "evaluate": False, "secagg": False, "empty-model": False,
}
#: SuperExec's poll for new tasks (default 1 s): part of every round's fixed cost.
TASK_POLL_INTERVAL = "0.05"


class FlowerKeyError(ValueError):
    """A SuperNode key is not an ECDSA P-384 key in OpenSSH encoding."""


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for every Flower process and ``flwr`` call of this deployment."""
    env = dict(os.environ if base is None else base)
    # Flower starts flower-superexec, flwr-serverapp and flwr-clientapp by name: this
    # interpreter's environment comes first on PATH.
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep)
                                              if p and p != bin_dir)])
    env.update({
        "FLWR_HOME": str(Path(flwr_home).resolve()),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": TASK_POLL_INTERVAL,
    })
    return env


def die_with_parent() -> None:
    """``preexec_fn`` for Flower processes: Linux sends SIGTERM when the process (thread) that
    started them dies, so a killed ``sov-node serve`` or ``sov-coordinator train`` leaves no
    SuperNode or SuperLink behind (each runs in its own session, out of reach of the
    parent's process group)."""
    import contextlib
    import ctypes

    with contextlib.suppress(OSError):  # not Linux: stop() still ends them on a clean exit
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def executable(name: str) -> str:
    """A Flower command from this interpreter's environment (not whatever PATH finds)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed: pip install flwr==1.41.0")
    return found


# -- SuperNode authentication keys --------------------------------------------------------------

def new_node_key() -> tuple[bytes, str]:
    """(private key, OpenSSH PEM; public key, one OpenSSH line)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    return private, public_line(key.public_key())


def public_line(public: ec.EllipticCurvePublicKey) -> str:
    return public.public_bytes(serialization.Encoding.OpenSSH,
                               serialization.PublicFormat.OpenSSH).decode("ascii")


def public_key_of(private_pem: bytes) -> str:
    key = serialization.load_ssh_private_key(private_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise FlowerKeyError("the SuperNode key is not an ECDSA key")
    return public_line(key.public_key())


def check_public_key(line: Any) -> str:
    """``line`` if it is an ECDSA P-384 OpenSSH public key, else FlowerKeyError (the check
    lives with the registration statement, ``consent.registration.check_flower_key``)."""
    from consent.registration import RegistrationError, check_flower_key

    try:
        return check_flower_key(line)
    except RegistrationError as exc:
        raise FlowerKeyError(str(exc).removeprefix("the registration's ")) from None


# -- the app ------------------------------------------------------------------------------------

def write_app(folder: Path, *, secagg: bool = False) -> Path:
    """The Flower app folder ``flwr run`` builds its FAB from (components of this package);
    with ``secagg`` the nodes run the SecAgg+ ClientApp (``agent_node.training:secagg_app``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": APP_NAME, "version": "1.0.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "sovereign",
            "components": {"serverapp": "coordinator.training:app",
                           "clientapp": "agent_node.training:"
                                        + ("secagg_app" if secagg else "app")},
            "config": RUN_CONFIG}}},
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(project), encoding="utf-8")
    return folder


def node_config_arg(values: Mapping[str, Any]) -> str:
    """SuperNode's ``--node-config``: space-separated TOML ``key=value`` pairs."""
    parts = []
    for key, value in values.items():
        text = tomli_w.dumps({"v": value}).strip()[len("v = "):]
        parts.append(f"{key}={text}")
    return " ".join(parts)


def supernode_command(superlink: str, root_ca: Path, key: Path, node_config: Mapping[str, Any],
                      runtime_port: int) -> list[str]:
    """A SuperNode connecting over TLS to ``superlink`` (its fleet address) with ``key``;
    its own Runtime API stays on loopback."""
    return [executable("flower-supernode"), "--superlink", superlink,
            "--root-certificates", str(root_ca), "--auth-supernode-private-key", str(key),
            "--node-config", node_config_arg(node_config), "--host", "127.0.0.1",
            "--port", str(runtime_port)]
