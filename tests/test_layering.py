"""The package boundaries the README draws ("Dependencies"), checked on every import statement
(module level and inside functions) of every package module, without importing anything.

- ``consent`` (the kernel) and ``protos`` (the wire contract) import no other package.
- ``ledger`` and ``fl`` use only ``consent`` and ``protos``.
- ``agent_node`` uses ``consent``, ``protos``, ``ledger`` and ``fl``; the coordinator uses the
  same but never ``agent_node`` and never the sealed-request protocol: it forwards envelopes
  it cannot open.
- ``wallet`` uses ``consent``, ``protos``, ``ledger`` and, of the node's package, only its
  client side (the client and the network view), never a node's storage, engine or service.
- nothing imports a command-line module (``cli.py``, ``*_cli.py``, ``__main__.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("consent", "protos", "ledger", "fl", "agent_node", "coordinator", "wallet")
ALLOWED = {
    "consent": set(),
    "protos": set(),
    "ledger": {"consent", "protos"},
    "fl": {"consent", "protos"},
    "agent_node": {"consent", "protos", "ledger", "fl"},
    "coordinator": {"consent", "protos", "ledger", "fl"},
    "wallet": {"consent", "protos", "ledger", "agent_node"},
}
# The sealed-request protocol: sealing, opening, signing and verifying requests and replies.
SEALING = ("consent.envelope", "consent.envelope_gm", "consent.protocol")
WALLET_MAY_USE_OF_NODE = ("agent_node.client", "agent_node.network")
SCRIPTS = ("bench", "demo")


def imports_of(source: str, module: str) -> list[str]:
    """Every module an import statement in ``source`` names (relative ones resolved)."""
    names = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def _is_cli(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last in ("cli", "__main__") or last.endswith("_cli")


def violations(package: str, module: str, source: str) -> list[str]:
    """What ``module`` (of ``package``) imports across the boundaries above."""
    found = []
    for name in imports_of(source, module):
        top = name.split(".")[0]
        if _is_cli(name) and top in (*PACKAGES, *SCRIPTS):
            found.append(f"{module} imports the command-line module {name}")
        if top not in PACKAGES or top == package or package not in ALLOWED:
            continue
        if top not in ALLOWED[package]:
            found.append(f"{module} imports {name}: {package} may use only "
                         f"{', '.join(sorted(ALLOWED[package])) or 'itself'}")
        elif package == "coordinator" and name.startswith(SEALING):
            found.append(f"{module} imports {name}: the coordinator forwards sealed envelopes "
                         "and never imports sealing code")
        elif package == "wallet" and top == "agent_node" and name != "agent_node" \
                and not name.startswith(WALLET_MAY_USE_OF_NODE):
            found.append(f"{module} imports {name}: the wallet uses only the node's client "
                         f"side ({', '.join(WALLET_MAY_USE_OF_NODE)})")
    return found


def modules() -> list[tuple[str, str, Path]]:
    out = []
    for package in (*PACKAGES, *SCRIPTS):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            out.append((package, module, path))
    return out


def test_every_package_keeps_to_its_layer() -> None:
    found = []
    for package, module, path in modules():
        source = path.read_text(encoding="utf-8")
        if package in SCRIPTS:
            found += [v for v in violations("__script__", module, source)
                      if "command-line module" in v]
            continue
        found += violations(package, module, source)
    assert not found, "layering broken:\n" + "\n".join(found)


@pytest.mark.parametrize(("package", "source", "says"), [
    ("coordinator", "from consent.envelope import seal", "never imports sealing code"),
    ("coordinator", "import consent.envelope_gm", "never imports sealing code"),
    ("coordinator", "from agent_node.client import NodeClient", "coordinator may use only"),
    ("wallet", "from agent_node.vault import Vault", "only the node's client side"),
    ("wallet", "from agent_node import grantstore", "only the node's client side"),
    ("consent", "from protos.transport import serve", "consent may use only itself"),
    ("ledger", "def f():\n    from agent_node import engine\n", "ledger may use only"),
    ("agent_node", "from wallet.cli import main", "command-line module wallet.cli"),
    ("agent_node", "from . import cli", "command-line module agent_node.cli"),
])
def test_the_check_catches_each_kind_of_crossing(package: str, source: str, says: str) -> None:
    found = violations(package, f"{package}.example", source)
    assert any(says in v for v in found), found


def test_allowed_imports_pass() -> None:
    assert violations("wallet", "wallet.x", "from agent_node.client import NodeClient") == []
    assert violations("coordinator", "coordinator.x", "from ledger.service import S") == []
    assert violations("agent_node", "agent_node.x", "from .query import q") == []
