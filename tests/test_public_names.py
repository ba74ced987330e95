"""Each package declares its public names (``__all__`` in its ``__init__``: the modules and
names other packages may import), and every import statement of every package module that
crosses into another package uses only those, without importing anything:

- ``import P.M`` / ``from P.M import X``: ``M`` is in ``P.__all__``;
- ``from P import X``: ``X`` is in ``P.__all__``;
- ``from P.M import X`` where ``P.M`` declares its own ``__all__``: ``X`` is in it;
- never a name starting with ``_``.

Tests, benchmarks and the demo may reach further (they test the insides).
"""

from __future__ import annotations

import ast

import pytest

from tests.test_layering import PACKAGES, REPO, modules


def declared(module: str) -> set[str] | None:
    """The ``__all__`` a module (or package) declares, read from its source; None if none."""
    path = REPO.joinpath(*module.split(".")).with_suffix(".py")
    if not path.exists():
        path = REPO.joinpath(*module.split("."), "__init__.py")
    if not path.exists():
        return None
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1
            else None)
        if isinstance(target, ast.Name) and target.id == "__all__" and node.value is not None:
            return set(ast.literal_eval(node.value))
    return None


def crossings(package: str, module: str, source: str) -> list[str]:
    """What ``module`` imports from other packages beyond their public names."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for target, name in imported:
            parts = target.split(".")
            if parts[0] not in PACKAGES or parts[0] == package:
                continue
            public = declared(parts[0]) or set()
            if len(parts) > 1 and parts[1] not in public:
                found.append(f"{module} imports {target}: {parts[1]} is not in "
                             f"{parts[0]}.__all__")
            if name is None:
                continue
            if name.startswith("_"):
                found.append(f"{module} imports the private name {target}.{name}")
            elif len(parts) == 1 and name not in public:
                found.append(f"{module} imports {target}.{name}: not in {parts[0]}.__all__")
            elif len(parts) > 1:
                own = declared(target)
                is_module = REPO.joinpath(*parts, f"{name}.py").exists()
                if own is not None and name not in own and not is_module:
                    found.append(f"{module} imports {target}.{name}: not in {target}.__all__")
    return found


def test_every_package_declares_its_public_names() -> None:
    missing = [p for p in PACKAGES if declared(p) is None]
    assert not missing, f"no __all__ in the __init__ of: {missing}"
    for package in PACKAGES:
        for name in declared(package) or set():
            exists = (REPO / package / f"{name}.py").exists() or (REPO / package / name).is_dir()
            source = (REPO / package / "__init__.py").read_text(encoding="utf-8")
            assert exists or name in source, f"{package}.__all__ names {name}, which is not there"


def test_packages_import_only_public_names() -> None:
    found = []
    for package, module, path in modules():
        if package in PACKAGES:
            found += crossings(package, module, path.read_text(encoding="utf-8"))
    assert not found, "private names imported across packages:\n" + "\n".join(found)


@pytest.mark.parametrize(("package", "source", "says"), [
    ("wallet", "from agent_node.vault import Vault", "vault is not in agent_node.__all__"),
    ("wallet", "import agent_node.engine", "engine is not in agent_node.__all__"),
    ("agent_node", "from ledger.log import Log", "log is not in ledger.__all__"),
    ("agent_node", "from consent.timespec import _unreadable", "private name"),
    ("agent_node", "from consent.timespec import EXAMPLES", "not in consent.timespec.__all__"),
    ("ledger", "from fl import whatever", "not in fl.__all__"),
])
def test_the_check_catches_each_kind_of_crossing(package: str, source: str, says: str) -> None:
    found = crossings(package, f"{package}.example", source)
    assert any(says in f for f in found), found


def test_public_imports_pass() -> None:
    assert crossings("wallet", "wallet.x", "from agent_node.client import NodeClient") == []
    assert crossings("agent_node", "agent_node.x", "from consent.timespec import TIME") == []
    assert crossings("agent_node", "agent_node.x", "from consent import grantstate") == []
