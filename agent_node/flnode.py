"""The node's SuperNode: federated training beside the gRPC service (``sov-node serve --fl``).

The node's SuperNode authentication key lives in ``HOME/flower/supernode.key`` (ECDSA P-384,
OpenSSH, 0600), made on first use. Its public half goes into every ``NodeRegistration`` the
node signs (``flower_key``), which is how the coordinator learns which SuperNode keys to admit:
a SuperNode whose key is not registered with the coordinator is refused by the SuperLink.

``SuperNodeProcess`` runs ``flower-supernode`` against the coordinator's fleet address over TLS
(the coordinator's CA, node.toml ``coordinator_ca``), with ``--node-config`` naming this node's
home, the passphrase file and the node's minimum, which ``agent_node.training:app`` reads; its
own Runtime API stays on loopback, and it runs with ``fl.deploy.flower_env`` (no telemetry, no
update check, no runtime dependency installation, ``FLWR_HOME`` in the node home). Beside it
runs the node's warm ClientApp process (``agent_node.clientapps``): the SuperExec finds the
``flwr-clientapp`` launcher in ``HOME/flower/bin`` first on its ``PATH``, and each message's
ClientApp is forked from the warm process instead of importing everything again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent_node.clientapps import write_launcher
from fl.deploy import (
    die_with_parent,
    executable,
    flower_env,
    new_node_key,
    public_key_of,
    supernode_command,
)
from protos.tls import write_private_pem
from protos.transport import free_port

KEY_FILE = Path("flower") / "supernode.key"


def node_key(home: Path) -> tuple[Path, str]:
    """(key file, public OpenSSH line) of the node's SuperNode key, made if missing."""
    path = Path(home) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        private, _ = new_node_key()
        write_private_pem(path, private)
    return path, public_key_of(path.read_bytes())


class SuperNodeProcess:
    def __init__(self, home: Path, superlink: str, root_ca: Path, *,
                 passphrase_file: Path | None = None, min_customers: int | None = None,
                 log: Path | None = None) -> None:
        self.home = Path(home).resolve()
        self.key, self.public_key = node_key(self.home)
        config: dict[str, Any] = {"home": str(self.home)}
        if passphrase_file is not None:
            config["passphrase-file"] = str(Path(passphrase_file).resolve())
        if min_customers is not None:
            config["min-customers"] = int(min_customers)
        self.config = config
        self.command = supernode_command(superlink, Path(root_ca).resolve(), self.key, config,
                                         free_port())
        self.env = flower_env(self.home / "flower" / "flwr")
        self.log = log or self.home / "flower" / "supernode.log"
        # Every message's ClientApp is forked from a warm process (agent_node.clientapps):
        # the SuperExec finds this launcher first on PATH.
        self.socket = _socket_path(self.home / "flower" / "clientapps.sock")
        launcher = write_launcher(self.home / "flower" / "bin", self.socket,
                                  executable("flwr-clientapp"))
        self.env["PATH"] = os.pathsep.join([str(launcher.parent), self.env["PATH"]])
        self.warm: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping: threading.Event | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def start(self) -> SuperNodeProcess:
        with self.log.open("ab") as out:
            if self.warm is None or self.warm.poll() is not None:
                self.warm = subprocess.Popen(
                    [sys.executable, "-m", "agent_node.clientapps", "--socket",
                     str(self.socket), "--home", str(self.home),
                     *(["--passphrase-file", str(self.config["passphrase-file"])]
                       if "passphrase-file" in self.config else [])],
                    env=self.env, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=die_with_parent)
            # Its own session, so stop() ends the SuperNode with its SuperExec and ClientApps.
            self.proc = subprocess.Popen(self.command, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=die_with_parent)
        return self

    def supervise(self, retry: float = 5.0) -> SuperNodeProcess:
        """Start it, and start it again ``retry`` s after it exits until ``stop``: a SuperNode
        exits when the SuperLink refuses its key (the coordinator registers node keys when it
        starts a run) or is gone, and must come back by itself."""
        self._stopping = threading.Event()

        def loop() -> None:
            while True:
                with self._lock:  # never start one after stop() has begun
                    if self._stopping is None or self._stopping.is_set():
                        return
                    self.start()
                    proc = self.proc
                assert proc is not None
                proc.wait()
                self.restarts += 1
                self._stopping.wait(retry)  # type: ignore[union-attr]

        self._thread = threading.Thread(target=loop, name="supernode", daemon=True)
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """End it at once (SIGKILL to its process group), as a crash would."""
        for proc in (self.proc, self.warm):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._stopping is not None:
                self._stopping.set()
        running = [p for p in (self.proc, self.warm) if p is not None and p.poll() is None]
        for proc in running:  # both at once: they stop within one ``timeout``
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _socket_path(wanted: Path) -> Path:
    """``wanted``, or a private temporary folder's when too long for a Unix socket."""
    if len(str(wanted)) < 100:
        return wanted
    import tempfile

    return Path(tempfile.mkdtemp(prefix="sov-fl-")) / wanted.name


def _register_locations() -> None:
    """The SuperNode's files under the home (agent_node.locations): its key, Flower's state
    and log; updates are computed in memory and nothing about customers is written here."""
    from agent_node import locations

    locations.file("flower", "agent_node.flnode", "flower/*", "", "none")


_register_locations()
