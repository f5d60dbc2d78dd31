"""The import contract: each part imports only the floors below it, including inside functions.

Floors, bottom to top: the ``rstar`` kernel → ``store`` and ``broker`` (which never import each
other) → ``actors`` → ``learner`` → ``app``. Every ``import`` and ``from … import`` statement of
every module is read from its source (``ast``), wherever it stands: at the top, inside a
function, or under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOOR = {"rstar": 0, "store": 1, "broker": 1, "actors": 2, "learner": 3, "app": 4}


def imported_parts(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` of every absolute import in ``path`` that names a part."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in FLOOR]
    return out


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, part in imported_parts(path):
            same_floor_other = FLOOR[part] == FLOOR[package] and part != package
            if FLOOR[part] > FLOOR[package] or same_floor_other:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {part}")
    return bad


@pytest.mark.parametrize("package", sorted(FLOOR))
def test_no_part_imports_a_floor_above_or_beside_it(package):
    assert violations(package) == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("import os\n\ndef f():\n    from learner.rounds import step\n    import app.cli, store\n")
    assert imported_parts(mod) == [(4, "learner"), (5, "app"), (5, "store")]
