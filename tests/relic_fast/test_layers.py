"""The house's layers: every import points down (or sideways within a layer), never up.

Each module of `relic_fast` and `dali_pipelines` has a layer below; an import of a module in a higher
layer, anywhere in a file (function-level imports included), fails. A new module fails until it is
given a layer, so the map stays complete.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

LAYERS: list[tuple[str, ...]] = [
    # 0: the DALI graphs and loaders, which know nothing of training
    ("dali_pipelines",),
    # 1: foundations that import no other project module but each other
    ("relic_fast.errors", "relic_fast.environment", "relic_fast.distributed", "relic_fast.schedules",
     "relic_fast.monitor", "relic_fast.runlock", "relic_fast.run_control", "relic_fast.stop_signals",
     "relic_fast.demo_render",
     "relic_fast.kernels", "relic_fast.compiling", "relic_fast.dataset_tools.progress",
     "relic_fast.dataset_tools.saliency", "relic_fast.config_legacy", "relic_fast.config_fields",
     "relic_fast.plot", "relic_fast.__init__"),
    # 2: the typed config and the device rules
    ("relic_fast.config", "relic_fast.config_sections", "relic_fast.devices"),
    # 3: the pieces a run is made of
    ("relic_fast.models", "relic_fast.loss", "relic_fast.optim", "relic_fast.checkpoint", "relic_fast.export",
     "relic_fast.demo_data", "relic_fast.dataset_tools", "relic_fast.data_plan", "relic_fast.online_probe",
     "relic_fast.resume_rule"),
    # 4: the plan of a run, its step and its saved state
    ("relic_fast.run_plan", "relic_fast.step", "relic_fast.synthetic", "relic_fast.loop", "relic_fast.run_state",
     "relic_fast.run_parts", "relic_fast.provenance"),
    # 5: the trainer
    ("relic_fast.trainer", "relic_fast.profile_report"),
    # 6: what runs a trainer or measures it (or shows its views), and the evaluation it is handed
    ("relic_fast.profiler", "relic_fast.selftest", "relic_fast.evaluation", "relic_fast.views"),
    # 7: experiments and benchmarks, over trainer and evaluation
    ("relic_fast.experiments", "relic_fast.bench"),
    # 8: the command line
    ("relic_fast.cli", "relic_fast.__main__"),
]


def layer_of(module: str) -> int:
    """The layer of `module`: the longest matching prefix in `LAYERS`."""
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        raise AssertionError(f"{module} has no layer in tests/relic_fast/test_layers.py: give it one")
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a project module in `path`, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else
                 [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            if name and name.split(".")[0] in ("relic_fast", "dali_pipelines"):
                found.append((node.lineno, name))
    return found


def upward_edges(root: Path = REPO) -> list[str]:
    """Every import in the packages under `root` that points to a higher layer."""
    edges = []
    for package in ("relic_fast", "dali_pipelines"):
        for path in sorted((root / package).rglob("*.py")):
            here = module_name(path, root)
            for line, imported in project_imports(path):
                if layer_of(imported) > layer_of(here):
                    edges.append(f"{path.relative_to(root)}:{line}: {here} (layer {layer_of(here)}) imports "
                                 f"{imported} (layer {layer_of(imported)})")
    return edges


def test_every_import_points_down():
    assert upward_edges() == []


def test_an_upward_import_is_caught(tmp_path):
    (tmp_path / "relic_fast").mkdir()
    (tmp_path / "relic_fast" / "models.py").write_text("def f():\n    from relic_fast.trainer import Trainer\n")
    (tmp_path / "dali_pipelines").mkdir()
    (tmp_path / "dali_pipelines" / "loader.py").write_text("import relic_fast.config\n")
    edges = upward_edges(tmp_path)
    assert len(edges) == 2, edges
    assert "relic_fast/models.py:2" in edges[0] and "relic_fast.trainer (layer 5)" in edges[0]
    assert "dali_pipelines/loader.py:1" in edges[1]


def test_a_module_without_a_layer_fails():
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("relic_fast.something_new")


def test_the_step_and_the_plan_import_without_dali():
    code = ("import sys, relic_fast.step, relic_fast.run_plan\n"
            "print(sorted(m for m in sys.modules if m.startswith('nvidia.dali')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_package_is_installed():
    """pyproject.toml lists its packages by hand: a package missing there is absent from a non-editable
    install (an editable one still finds it), so every folder with an __init__.py must be listed."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(init, REPO) for package in ("relic_fast", "dali_pipelines")
             for init in (REPO / package).rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
