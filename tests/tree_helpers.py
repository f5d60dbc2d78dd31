"""Hand-built search trees shared by the selection tests and the learner-data tests.

Import as ``from tree_helpers import ...``: pytest puts ``tests/`` on ``sys.path`` for the root
conftest. A tree is a spec: ``(idx, parent, q[, terminal, correct])`` per node, root first.
"""

from __future__ import annotations

from collections.abc import Iterator

# The paper's example tree: SFT picks leaves 7 (avg .95) and 4 (.9).
#   0 (root)
#   ├─ 1 q=.8 ─ 4 q=1  T correct
#   │         └ 5 q=-1 T wrong
#   ├─ 2 q=.5 ─ 6 q=1  T correct
#   ├─ 3 q=.9 ─ 7 q=1  T correct   (highest q positive)
#   ├─ 8 q=-.9 ─ 9 q=-1 T wrong     (lowest q negative)
#   ├─ 10 q=-.2 ─ 11 q=-1 T wrong
#   └─ 12 q=-.5 ─ 13 q=-1 T wrong
PAPER = [
    (0, None, 0),
    (1, 0, 0.8),
    (2, 0, 0.5),
    (3, 0, 0.9),
    (4, 1, 1, True, True),
    (5, 1, -1, True, False),
    (6, 2, 1, True, True),
    (7, 3, 1, True, True),
    (8, 0, -0.9),
    (9, 8, -1, True, False),
    (10, 0, -0.2),
    (11, 10, -1, True, False),
    (12, 0, -0.5),
    (13, 12, -1, True, False),
]


def walk(spec: list[tuple]) -> Iterator[tuple[int, int | None, int, float, bool, bool | None]]:
    """``(idx, parent, depth, q, terminal, correct)`` per node of ``spec``, in its order."""
    depth: dict[int | None, int] = {None: -1}
    for idx, parent, q, *rest in spec:
        depth[idx] = depth[parent] + 1
        terminal, correct = rest if rest else (False, None)
        yield idx, parent, depth[idx], q, terminal, correct
