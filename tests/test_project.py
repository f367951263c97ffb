"""Project-level invariants: layering of the packages and the pins shared by pip and conda."""
import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_ldm_depends_on_nothing_above_it():
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imported_modules(p) & {"msbd", "experiments", "scripts", "hydra"})
        for p in (ROOT / "ldm").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_library_code_never_imports_hydra():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "msbd").rglob("*.py") if "hydra" in _imported_modules(p)]
    assert offenders == []


def _pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^\s*(?:-\s+)?([A-Za-z0-9_.\-]+)==([^\s#]+)", text, re.M)}


def test_conda_environment_has_the_same_pins_as_requirements():
    pip_pins = _pins((ROOT / "requirements.txt").read_text())
    conda_pins = _pins((ROOT / "environment.yml").read_text())
    assert pip_pins and pip_pins == conda_pins
