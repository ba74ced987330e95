"""The node's ClientApp processes, forked from one that has already imported them.

Flower 1.41's SuperNode hands every message to a fresh ``flwr-clientapp`` process (its
SuperExec starts one per message, by name, from ``PATH``). Each would import Flower, PyTorch,
Opacus and this package again: seconds of CPU per message, paid again in every round, and
more for a training message (Opacus) than for any other. So a node runs one **warm** process
(``python -m agent_node.clientapps --socket PATH``) that imports all of that once, and puts a
tiny ``flwr-clientapp`` launcher first on its SuperNode's ``PATH``: the launcher passes its
arguments over a Unix socket (0600, in the node home) and the warm process forks a child that
runs Flower's own ``flwr-clientapp`` entry point with them, so everything after the fork is
Flower's code unchanged (token, FAB install, the app loaded by name, heartbeats, exit). The
launcher waits for the child and exits with its code. Without the warm process (not started,
or it died) the launcher runs the real ``flwr-clientapp``, as Flower would have.

The warm process also unlocks the node home once (the passphrase KDF,
``agent_node.training.unlock_home``), as ``sov-node serve`` holds it unlocked; the vault is
opened after the fork by each child, as a fresh process would (a SQLite connection must not
cross a fork), and nothing about customers is read before it. The children get fresh NumPy
and PyTorch random states.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import stat
import sys
from pathlib import Path
from typing import Any

#: What every ClientApp of this node imports: Flower's entry point, the app (its handlers,
#: PyTorch, the vault code) and Opacus (DP-SGD).
PRELOAD = ("flwr.supernode.cli.flwr_clientapp", "agent_node.training", "opacus")
LAUNCHER = "flwr-clientapp"

_LAUNCHER_CODE = '''#!{python} -S
# Written by agent_node.clientapps: hands this ClientApp to the node's warm process.
import os, socket, sys
args = "\\0".join(sys.argv[1:]).encode()
try:
    link = socket.socket(socket.AF_UNIX)
    link.connect({socket_path!r})
    link.sendall(len(args).to_bytes(4, "big") + args)
except OSError:
    os.execv({real!r}, [{real!r}, *sys.argv[1:]])
code = b""
while chunk := link.recv(16):
    code += chunk
sys.exit(int(code or b"1"))
'''


def write_launcher(folder: Path, socket_path: Path, real: str) -> Path:
    """The ``flwr-clientapp`` put first on the SuperNode's PATH (``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LAUNCHER
    path.write_text(_LAUNCHER_CODE.format(python=sys.executable, socket_path=str(socket_path),
                                          real=real))
    path.chmod(stat.S_IRWXU)
    return path


def serve(socket_path: Path, node_config: dict[str, Any] | None = None) -> None:
    """Import PRELOAD (and unlock the node home of ``node_config``, the SuperNode's), then
    fork one child per launcher connection until SIGTERM."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    _warm_up()
    if node_config:
        from agent_node.training import unlock_home

        try:
            unlock_home(node_config)
        except Exception as exc:  # each ClientApp then fails (and says why) as it would alone
            print(f"agent_node.clientapps: the node home stays locked: {exc}", file=sys.stderr)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    listener = socket.socket(socket.AF_UNIX)
    old = os.umask(0o177)  # the socket is the node user's only
    try:
        listener.bind(str(socket_path))
    finally:
        os.umask(old)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, lambda *_: _reap())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            try:
                conn, _ = listener.accept()
            except InterruptedError:
                continue
            with conn:
                argv = _read_request(conn)
                if argv is None:
                    continue
                if os.fork() == 0:
                    listener.close()
                    _child(conn, argv)  # never returns
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


def _warm_up() -> None:
    """One DP-SGD step on made-up data: what a training message runs first in a process
    imports and initialises more lazily (PyTorch imports ``torch._dynamo`` with the first
    optimiser, seconds of CPU; Opacus wraps the model with its hooks), so it happens here
    once, not in every ClientApp."""
    import warnings

    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    from fl import models

    # One thread, as every training does (fl.train): no OpenMP worker threads exist in this
    # process when it forks (libgomp's are not fork-safe).
    torch.set_num_threads(1)
    model = models.build(models.ModelSpec("logreg"), 2, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4)), batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0)
        for xb, yb in loader:
            optimizer.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(
                model(xb).squeeze(-1), yb).backward()
            optimizer.step()


def _read_request(conn: socket.socket) -> list[str] | None:
    header = conn.recv(4, socket.MSG_WAITALL)
    if len(header) != 4:
        return None
    size = int.from_bytes(header, "big")
    data = conn.recv(size, socket.MSG_WAITALL) if size else b""
    if len(data) != size:
        return None
    return data.decode().split("\0") if data else []


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _child(conn: socket.socket, argv: list[str]) -> None:
    """Run Flower's ``flwr-clientapp`` with the launcher's arguments; report its exit code."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _fresh_randomness()
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        sys.argv = [LAUNCHER, *argv]
        try:
            flwr_clientapp()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        with contextlib.suppress(OSError):
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(str(code).encode())
            conn.close()
        os._exit(code)


def _fresh_randomness() -> None:
    """A forked child would share the warm process's NumPy and PyTorch generator states."""
    import numpy as np
    import torch

    np.random.seed(int.from_bytes(os.urandom(4), "big"))
    torch.seed()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--home", default=None, help="the node home (SuperNode's node config)")
    parser.add_argument("--passphrase-file", default=None)
    args = parser.parse_args()
    config: dict[str, Any] = {}
    if args.home:
        config["home"] = args.home
        if args.passphrase_file:
            config["passphrase-file"] = args.passphrase_file
    serve(args.socket, config)


if __name__ == "__main__":
    main()
