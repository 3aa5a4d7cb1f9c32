"""Packaging: what `pip install kaf` gives and needs (the wheel itself is built and used by .ci/run)."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kaf

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    """The distribution name of a requirement line, normalised (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0)).lower()


def test_the_version_is_written_once():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kaf.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", kaf.__version__)


def test_the_package_data_ships_types_kernel_source_and_views():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert set(data["kaf"]) == {"py.typed", "_nw_cpu.cpp"} and data["kaf.viz"] == ["views.mjs"]
    for folder, names in data.items():
        for name in names:
            assert (ROOT / folder.replace(".", "/") / name).is_file(), f"{folder}/{name} is missing"


def test_core_needs_only_torch_and_numpy_and_extras_cover_the_pins():
    project = PYPROJECT["project"]
    assert sorted(_name(r) for r in project["dependencies"]) == ["numpy", "torch"]
    extras = project["optional-dependencies"]
    assert {"book", "sweeps", "test"} <= set(extras)
    in_extras = {_name(r) for rs in extras.values() for r in rs} - {"kaf"}
    pinned = {_name(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith(("#", "-"))}
    # every pinned package belongs to the core or an extra, and no extra names an unpinned one
    assert pinned == in_extras | {"torch", "numpy"}


def test_import_kaf_loads_no_optional_dependency():
    """`import kaf` and a forward and backward through its modules, in a process where the
    optional dependencies cannot be imported."""
    blocked = ["pandas", "sklearn", "scipy", "matplotlib", "bokeh", "tqdm", "mlxtend", "distributed"]
    code = f"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked: kaf's core must not need it")

sys.meta_path.insert(0, Block())
import torch
import kaf, kaf.functional, kaf.nn, kaf.estimators
x = torch.randn(5, 3, requires_grad=True)
act = kaf.FluidReLU(3)
y = kaf.functional.nadaraya_watson(act(x), torch.randn(7, 3), torch.rand(7, 3), 0.5)
y.sum().backward()
assert x.grad is not None and act.a.grad is not None
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_readme_test_command_is_the_one_ci_runs():
    """.ci/run builds the environment with README's set-up (the first half of its test command)
    before the book, then runs README's whole test command verbatim: the halves as written in
    .ci/run, joined, are a line of README.md, and that joined line is what runs."""
    ci = (ROOT / ".ci" / "run").read_text()
    setup = re.search(r"^setup='([^']*)'$", ci, re.M).group(1)
    tests = re.search(r"^tests='([^']*)'$", ci, re.M).group(1)
    assert f"{setup} && {tests}" in (ROOT / "README.md").read_text().splitlines()
    assert re.search(r'^readme_command="\$setup && \$tests"$', ci, re.M)
    assert ci.count('eval "$setup"') == 1 and ci.count('eval "$readme_command"') == 1
    assert 'eval "$tests"' not in ci
