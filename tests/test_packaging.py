"""pyproject.toml installs the packages with the requirements the README's requirements*.txt list."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]


def requirements(name: str) -> List[str]:
    """The requirement lines of a requirements file, comments and spaces dropped."""
    lines = (re.sub(r"#.*", "", line).replace(" ", "") for line in (ROOT / name).read_text().splitlines())
    return [line for line in lines if line]


def project() -> Dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_dependencies_are_requirements_txt():
    assert project()["dependencies"] == requirements("requirements.txt")


def test_extras_are_the_other_requirement_files():
    extras = project()["optional-dependencies"]
    assert extras["gpu"] == requirements("requirements-gpu.txt")
    assert extras["test"] == requirements("requirements-test.txt")
    assert set(extras) == {"gpu", "hub", "embeddings", "test"}


def test_packages_import_from_outside_the_checkout(tmp_path):
    code = "import classification, llama.model; print(classification.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == ROOT / "classification" / "__init__.py"


def test_no_sys_path_edits():
    for path in [*ROOT.glob("*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/**/*.py"),
                 *ROOT.glob("classification/**/*.py"), *ROOT.glob("llama/*.py")]:
        if path.name == Path(__file__).name:
            continue
        assert "sys.path" not in path.read_text(encoding="utf-8"), path
