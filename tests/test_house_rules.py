"""The house rules of the tree (docs/architecture.md), checked on the source text.

Each rule is one that drifted before: who may import whom, one home for each model name
and wire size, modules a reader can take in at one sitting, tests that use public names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared", "server", "device_client", "bench", "scripts")
#: which top-level packages each one may import (bench and scripts sit on top of both sides)
ALLOWED_IMPORTS = {
    "shared": set(),
    "server": {"shared"},
    "device_client": {"shared"},
    "bench": {"shared", "server", "device_client"},
    "scripts": {"shared", "server", "device_client"},
}
#: model names and wire sizes: defined in these modules only, imported everywhere else
ONE_HOME = {
    "secdood_base": "shared/model_names.py",
    "hypernetwork": "shared/model_names.py",
    "diffusion_token": "shared/model_names.py",
    "secdood-method": "shared/saved_files.py",
}
WIRE_NAMES = {"CHUNK_BYTES", "MAX_MESSAGE_BYTES"}
MAX_MODULE_LINES = 400
#: modules allowed above MAX_MODULE_LINES, with the one job that needs the length
LONG_MODULES: dict[str, str] = {}


def _sources(*packages: str) -> list[Path]:
    files = []
    for package in packages:
        files += [
            path
            for path in sorted((ROOT / package).rglob("*.py"))
            if "rpc/secdood" not in path.as_posix()  # generated stubs
        ]
    return files


def _imported_modules(tree: ast.AST) -> list[str]:
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    return modules


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_the_layers_below(package):
    wrong = []
    for path in _sources(package):
        for module in _imported_modules(ast.parse(path.read_text())):
            top = module.split(".")[0]
            if top in ALLOWED_IMPORTS and top != package and top not in ALLOWED_IMPORTS[package]:
                wrong.append(f"{_relative(path)} imports {module}")
    assert not wrong, wrong


def test_nothing_imports_the_server_command_line():
    importers = [
        _relative(path)
        for path in _sources(*PACKAGES)
        if any(m == "server.cli" for m in _imported_modules(ast.parse(path.read_text())))
    ]
    assert not importers, f"server/cli.py is a leaf (console entry point only): {importers}"


def test_model_names_and_formats_are_string_literals_in_one_module_only():
    found: dict[str, list[str]] = {name: [] for name in ONE_HOME}
    for path in _sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in found:
                found[node.value].append(_relative(path))
    for name, places in found.items():
        assert set(places) == {ONE_HOME[name]}, f"{name!r} written in {sorted(set(places))}"


def test_wire_sizes_are_defined_in_shared_wire_only():
    definitions = []
    for path in _sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if names & WIRE_NAMES:
                definitions.append(_relative(path))
    assert definitions == ["shared/wire.py", "shared/wire.py"], definitions


@pytest.mark.parametrize("package", ["server", "device_client"])
def test_runtime_modules_stay_readable_at_one_sitting(package):
    long = {
        _relative(path): n
        for path in _sources(package)
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert set(long) <= set(LONG_MODULES), f"modules above {MAX_MODULE_LINES} lines: {long}"


def test_tests_use_fixtures_and_public_names():
    wrong = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "conftest":
                wrong.append(f"{_relative(path)}: from conftest import")
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] in PACKAGES
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    wrong.append(f"{_relative(path)}: {node.module} {private}")
    assert not wrong, wrong
