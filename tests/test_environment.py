"""environment.yml and pyproject.toml must list the same dependencies."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11


ROOT = Path(__file__).resolve().parent.parent


def _name(spec: str) -> str:
    return re.split(r"[<>=\[ ;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(d) for d in project["dependencies"]}
    for extra in ("notebooks", "test"):
        wanted |= {_name(d) for d in project["optional-dependencies"][extra]}
    listed = set()
    text = (ROOT / "environment.yml").read_text().split("dependencies:", 1)[1]
    for line in text.splitlines():
        item = line.split("#")[0].strip()
        if item.startswith("- ") and not item.endswith(":"):
            name = _name(item[2:])
            if name not in ("python", "pip", "-e"):
                listed.add(name)
    assert listed == wanted, {
        "only in environment.yml": listed - wanted,
        "only in pyproject": wanted - listed,
    }
