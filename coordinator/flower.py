"""The coordinator's Flower deployment: a SuperLink behind the fleet gateway, node keys from the
registry, runs submitted with ``flwr run`` and judged by ``flwr ls``.

``FlowerLink`` starts

* ``flower-superlink`` on **loopback only** (``127.0.0.1``, a free port), with TLS (a
  certificate from the coordinator's CA), SuperNode authentication (``--enable-supernode-auth``),
  runtime dependency installation disabled and its state in ``FOLDER/state.db``; its Control API
  (no authentication in the open-source build) is thus reachable by the coordinator's own
  processes only;
* ``coordinator.fleetgate`` on the fleet address the nodes dial, forwarding the Fleet API and
  nothing else to the loopback SuperLink.

Every ``flwr`` call runs with ``fl.deploy.flower_env`` (telemetry and update checks off,
``FLWR_HOME`` = ``FOLDER/flwr``, whose ``config.toml`` names only this SuperLink).

``sync_nodes`` makes the SuperLink's registered SuperNode keys exactly the ``flower_key`` of the
nodes in the coordinator's registry (``flwr supernode register`` / ``unregister``), so a node
that is not registered with the coordinator cannot join a run. ``run`` submits a run (``flwr
run --format json``), follows the ServerApp's ``progress.jsonl`` and decides the outcome from
``flwr ls --run-id N --format json`` (its ``success`` field and the run's ``status``): ``flwr
run`` exits 0 even when the ServerApp raised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from coordinator.errors import CoordinatorError
from fl.deploy import RUN_CONFIG, die_with_parent, executable, flower_env, write_app
from protos.tls import TLSMaterial, issue_server_certificate, write_private_pem
from protos.transport import free_port

CONNECTION = "coordinator"


class FlowerError(CoordinatorError):
    """The SuperLink could not be started or asked, or a run failed; the message says why."""


@dataclass(frozen=True)
class RunResult:
    run_id: int
    status: str
    outcome: dict[str, Any]
    elapsed: float


def registry_keys(records: Iterable[Any]) -> dict[str, str]:
    """Node DID -> SuperNode key of every registered node (``coordinator.registry`` records)
    whose registration carries one."""
    return {r.did: r.registration.flower_key for r in records if r.registration.flower_key}


class FlowerLink:
    """A SuperLink on loopback and its fleet gateway, as child processes of this one."""

    def __init__(self, folder: Path, ca: TLSMaterial, fleet_listen: str, *,
                 hostnames: Iterable[str] = ()) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fleet_listen = fleet_listen
        self.control = f"127.0.0.1:{free_port()}"
        self.env = flower_env(self.folder / "flwr")
        self.app = write_app(self.folder / "app")
        self.secagg_app = write_app(self.folder / "app-secagg", secagg=True)
        self.ca_path = self.folder / "ca.pem"
        self.ca_path.write_bytes(ca.cert_pem)
        host = fleet_listen.rpartition(":")[0].strip("[]")
        server = issue_server_certificate(ca, [host, *hostnames])
        self.cert_path, self.key_path = self.folder / "superlink.pem", self.folder / "superlink.key"
        self.cert_path.write_bytes(server.cert_pem)
        if self.key_path.exists():
            self.key_path.unlink()
        write_private_pem(self.key_path, server.key_pem)
        self._procs: list[subprocess.Popen[bytes]] = []
        self._write_connection()

    # -- processes ----------------------------------------------------------------------------

    def _write_connection(self) -> None:
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {
            "default": CONNECTION,
            CONNECTION: {"address": self.control, "root-certificates": str(self.ca_path)}}}))

    def start(self, timeout: float = 60.0) -> FlowerLink:
        host, _, port = self.control.rpartition(":")
        log = (self.folder / "superlink.log").open("ab")
        self._procs.append(subprocess.Popen(
            [executable("flower-superlink"), "--ssl-ca-certfile", str(self.ca_path),
             "--ssl-certfile", str(self.cert_path), "--ssl-keyfile", str(self.key_path),
             "--enable-supernode-auth", "--disable-runtime-dependency-installation",
             "--database", str(self.folder / "state.db"), "--host", host, "--port", port],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
            start_new_session=True, preexec_fn=die_with_parent))
        gate_log = (self.folder / "fleetgate.log").open("ab")
        self._procs.append(subprocess.Popen(
            [sys.executable, "-m", "coordinator.fleetgate", "--listen", self.fleet_listen,
             "--upstream", self.control, "--cert", str(self.cert_path), "--key",
             str(self.key_path), "--ca", str(self.ca_path)],
            env=self.env, stdout=gate_log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent))
        deadline = time.monotonic() + timeout
        while True:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                self.stop()
                raise FlowerError(f"the SuperLink or its gateway exited at start; see "
                                  f"{self.folder / 'superlink.log'}")
            try:
                self.flwr("supernode", "ls", timeout=30)
                break
            except FlowerError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.5)
        return self

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()

    def __enter__(self) -> FlowerLink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the flwr CLI -------------------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 60.0, cwd: Path | None = None
             ) -> dict[str, Any]:
        """``flwr ARGS --format json`` against this SuperLink; its JSON, or FlowerError when
        it exits non-zero or answers ``success: false`` (it exits 0 on some errors)."""
        try:
            done = subprocess.run([executable("flwr"), *args, "--format", "json"],
                                  env=self.env, capture_output=True, timeout=timeout,
                                  cwd=cwd or self.folder, check=False)
        except subprocess.TimeoutExpired:
            raise FlowerError(f"flwr {args[0]} did not answer within {timeout:g} s") from None
        text = done.stdout.decode(errors="replace").strip()
        try:
            found = json.loads(text[text.index("{"):]) if "{" in text else {}
        except ValueError:
            found = {}
        if done.returncode != 0 or not found.get("success"):
            why = found.get("error-message") or (text or done.stderr.decode(errors="replace"))
            raise FlowerError(f"flwr {' '.join(args[:2])} failed: {why.strip()[-300:]}")
        return found

    # -- nodes --------------------------------------------------------------------------------

    @property
    def _nodes_file(self) -> Path:
        return self.folder / "nodes.json"

    def known_nodes(self) -> dict[str, dict[str, Any]]:
        """DID -> {"key": OpenSSH line, "node_id": Flower node id} as registered here."""
        if not self._nodes_file.exists():
            return {}
        return dict(json.loads(self._nodes_file.read_text()))

    def sync_nodes(self, keys: dict[str, str]) -> dict[int, str]:
        """Make the SuperLink's SuperNode keys exactly ``keys`` (node DID -> flower_key);
        returns Flower node id -> node DID."""
        known = self.known_nodes()
        for did, entry in list(known.items()):
            if keys.get(did) != entry["key"]:
                self.flwr("supernode", "unregister", str(entry["node_id"]))
                del known[did]
                self._save(known)
        for did, key in keys.items():
            if did in known:
                continue
            key_file = self.folder / "register.pub"
            key_file.write_text(key + "\n")
            found = self.flwr("supernode", "register", str(key_file))
            known[did] = {"key": key, "node_id": int(found["node-id"])}
            self._save(known)
        return {int(e["node_id"]): did for did, e in known.items()}

    def _save(self, known: dict[str, dict[str, Any]]) -> None:
        tmp = self._nodes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(self._nodes_file)

    def online(self) -> set[int]:
        found = self.flwr("supernode", "ls")
        return {int(n["node-id"]) for n in found.get("nodes", []) if n.get("status") == "online"}

    def wait_online(self, count: int, timeout: float) -> set[int]:
        deadline = time.monotonic() + timeout
        while True:
            online = self.online()
            if len(online) >= count:
                return online
            if time.monotonic() > deadline:
                raise FlowerError(f"only {len(online)} SuperNode(s) online after {timeout:g} s, "
                                  f"fewer than {count}: start them with sov-node serve --fl")
            time.sleep(1.0)

    # -- runs ---------------------------------------------------------------------------------

    def run(self, config: dict[str, Any], result_dir: Path, *,
            progress: Callable[[dict[str, Any]], None] | None = None,
            timeout: float = 3600.0) -> RunResult:
        """Submit a run of the app with ``config`` (keys of ``fl.deploy.RUN_CONFIG``) and wait
        for it; FlowerError with the ServerApp's reason when it fails."""
        unknown = set(config) - set(RUN_CONFIG)
        if unknown:
            raise FlowerError(f"run config key {sorted(unknown)[0]!r} is unknown")
        result_dir = Path(result_dir)
        result_dir.mkdir(parents=True, exist_ok=True)
        overrides = result_dir / "run-config.toml"
        overrides.write_text(tomli_w.dumps({**config, "result-dir": str(result_dir.resolve())}))
        started = time.monotonic()
        app = self.secagg_app if config.get("secagg") else self.app
        submitted = self.flwr("run", str(app), CONNECTION, "--run-config", str(overrides))
        run_id = int(submitted["run-id"])
        status = self._follow(run_id, result_dir, progress or (lambda entry: None),
                              started + timeout)
        elapsed = time.monotonic() - started
        if status["status"] != "finished:completed":
            failure = result_dir / "failure.json"
            reason = (json.loads(failure.read_text())["error"] if failure.exists()
                      else status.get("status-details") or status["status"])
            raise FlowerError(f"training run {run_id} {status['status']}: {reason}")
        outcome = json.loads((result_dir / "outcome.json").read_text())
        return RunResult(run_id, status["status"], outcome, elapsed)

    def status(self, run_id: int) -> dict[str, Any]:
        found = self.flwr("ls", "--run-id", str(run_id))
        runs = found.get("runs") or []
        if not runs:
            raise FlowerError(f"the SuperLink knows no run {run_id}")
        return dict(runs[0])

    def _follow(self, run_id: int, result_dir: Path, progress: Callable[[dict[str, Any]], None],
                deadline: float) -> dict[str, Any]:
        """Report progress lines as they come; the run's final status (from flwr ls)."""
        seen = 0
        last_check = 0.0
        progress_file = result_dir / "progress.jsonl"
        while True:
            if progress_file.exists():
                lines = progress_file.read_text().splitlines()
                for line in lines[seen:]:
                    progress(json.loads(line))
                seen = len(lines)
            ended = any((result_dir / f).exists() for f in ("outcome.json", "failure.json"))
            now = time.monotonic()
            if ended or now - last_check > 5.0:
                last_check = now
                status = self.status(run_id)
                if str(status.get("status", "")).startswith("finished"):
                    return status
            if now > deadline:
                self.flwr("stop", str(run_id))
                raise FlowerError(f"training run {run_id} did not finish in time; stopped")
            time.sleep(0.2)
