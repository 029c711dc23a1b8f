"""ruff keeps the library, tests, benchmarks and notebooks lint-clean and formatted."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]])
def test_ruff(command):
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, *command, "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def _module_imports(path: Path) -> set[str]:
    """pcamlib modules ``path`` imports at module level (function-level imports run later)."""
    import ast

    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            package = path.parent.relative_to(ROOT).parts[1:]  # () or ("pretrained",)
            base = list(package[: len(package) - node.level + 1])
            for name in [node.module] if node.module else [a.name for a in node.names]:
                found.add(".".join([*base, *name.split(".")]).split(".")[0] or "pretrained")
    return found


def test_no_module_imports_itself_through_others():
    package = ROOT / "pcamlib"
    files = [p for p in package.rglob("*.py") if p.name != "__init__.py"]
    graph = {p.stem: _module_imports(p) for p in files}
    graph["pretrained"] = _module_imports(package / "pretrained" / "__init__.py")

    def reachable(module: str) -> set[str]:
        seen, todo = set(), [module]
        while todo:
            new = graph.get(todo.pop(), set()) - seen
            seen |= new
            todo += new
        return seen

    assert {"sources", "cache"} <= reachable("stream")  # the graph is read, not empty
    cycles = sorted(m for m in graph if m in reachable(m))
    assert not cycles, f"modules that import themselves through others: {cycles}"


def test_the_package_exports_resolve_lazily():
    import subprocess

    code = "import sys, pcamlib; assert 'keras' not in sys.modules; print(len(pcamlib.__all__))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    import pcamlib

    for name in pcamlib.__all__:
        assert callable(getattr(pcamlib, name)), name
