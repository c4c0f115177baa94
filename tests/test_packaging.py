"""The declared dependencies: every direct import is declared, in both manifests."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
#: Conda packages of environment.yml that are no dependency of glcgeo's own.
CONDA_ONLY = {'python', 'pip', 'pytest', 'ruff', 'mypy'}


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised as pip compares them."""
    match = re.match(r'[A-Za-z0-9][A-Za-z0-9._-]*', requirement)
    assert match, requirement
    return re.sub(r'[-_.]+', '-', match.group()).lower()


def _requirements(lines: list[str]) -> dict[str, str]:
    """Requirements by normalised name, with their version specifiers."""
    return {_name(r): re.sub(r'\s', '', r[len(_name(r)) :]) for r in lines}


def _declared() -> dict[str, str]:
    with open(ROOT / 'pyproject.toml', 'rb') as f:
        return _requirements(tomllib.load(f)['project']['dependencies'])


def _imported_modules(folder: Path) -> set[str]:
    """Top-level names of the absolute imports of a folder's Python files."""
    names = set()
    for path in folder.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split('.')[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module is not None
                names.add(node.module.split('.')[0])
    return names


def test_every_direct_import_is_a_declared_dependency() -> None:
    local = {'glcgeo'} | {
        p.stem for p in (ROOT / 'experiments').iterdir() if p.suffix == '.py'
    }
    local |= {p.name for p in (ROOT / 'experiments').iterdir() if p.is_dir()}
    modules = _imported_modules(ROOT / 'glcgeo') | _imported_modules(
        ROOT / 'experiments'
    )
    third_party = modules - local - set(sys.stdlib_module_names)
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = {
        module: distributions.get(module)
        for module in sorted(third_party)
        if not any(_name(d) in declared for d in distributions.get(module, []))
    }
    assert not undeclared, f'imported but not in pyproject.toml: {undeclared}'


def test_environment_yml_declares_what_pyproject_does() -> None:
    environment = yaml.safe_load((ROOT / 'environment.yml').read_text())
    conda = [d for d in environment['dependencies'] if isinstance(d, str)]
    (pip,) = [d['pip'] for d in environment['dependencies'] if isinstance(d, dict)]
    listed = _requirements(conda) | _requirements(
        [r for r in pip if not r.startswith('-e')]
    )
    for name in CONDA_ONLY:
        listed.pop(name, None)
    assert listed == _declared()
    python = next(d for d in conda if _name(d) == 'python')
    assert python == 'python=3.12'
