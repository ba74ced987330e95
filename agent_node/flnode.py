"""The node's SuperNode: federated training beside the gRPC service (``sov-node serve --fl``).

The node's SuperNode authentication key lives in ``HOME/flower/supernode.key`` (ECDSA P-384,
OpenSSH, 0600), made on first use. Its public half goes into every ``NodeRegistration`` the
node signs (``flower_key``), which is how the coordinator learns which SuperNode keys to admit:
a SuperNode whose key is not registered with the coordinator is refused by the SuperLink.

``SuperNodeProcess`` runs ``flower-supernode`` against the coordinator's fleet address over TLS
(the coordinator's CA, node.toml ``coordinator_ca``), with ``--node-config`` naming this node's
home, the passphrase file and the node's minimum, which ``agent_node.training:app`` reads; its
own Runtime API stays on loopback, and it runs with ``fl.deploy.flower_env`` (no telemetry, no
update check, no runtime dependency installation, ``FLWR_HOME`` in the node home).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

from fl.deploy import (
    die_with_parent,
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
        self.command = supernode_command(superlink, Path(root_ca).resolve(), self.key, config,
                                         free_port())
        self.env = flower_env(self.home / "flower" / "flwr")
        self.log = log or self.home / "flower" / "supernode.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping: threading.Event | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def start(self) -> SuperNodeProcess:
        with self.log.open("ab") as out:
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
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            if self._stopping is not None:
                self._stopping.set()
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def _register_locations() -> None:
    """The SuperNode's files under the home (agent_node.locations): its key, Flower's state
    and log; updates are computed in memory and nothing about customers is written here."""
    from agent_node import locations

    locations.file("flower", "agent_node.flnode", "flower/*", "", "none")


_register_locations()
