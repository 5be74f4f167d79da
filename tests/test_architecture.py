"""The package's rules of structure, checked on the source (seconds, no engine).

- every module of ``vllm_esp/`` stays under ~450 lines;
- the planner imports only the standard library (any module of it, any import in it);
- ``ops/`` imports vLLM nowhere at module level (lazily inside functions only);
- ``config.py``, ``planner/`` and ``ops/`` never import ``integration/`` (no upward arrow);
- outside ``patches/`` and ``integration/spanning/views.py`` no code touches the internals of
  a vLLM scheduler, KV cache manager or model runner (a list of the names they are reached
  by: block tables per request, the null block, private methods, the runner's buffers), in
  the packages that deal with vLLM objects (``integration/``, ``scheduling/``). A subclass
  extending one of vLLM's private methods calls ``super()`` (a hook, not a touch).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vllm_esp"
MAX_LINES = 450
VIEWS = PACKAGE / "integration" / "spanning" / "views.py"


def _modules(sub: str = "") -> list[Path]:
    return sorted((PACKAGE / sub).rglob("*.py"))


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_planner_imports_only_the_standard_library():
    allowed_prefixes = ("vllm_esp.planner",)
    third_party = ("torch", "numpy", "vllm", "scipy", "triton")
    for path in _modules("planner"):
        for name in _imports(path):
            if name.startswith("vllm_esp") and not name.startswith(allowed_prefixes):
                pytest.fail(f"{path.name} imports {name}: the planner imports only itself")
            assert name.split(".")[0] not in third_party, f"{path.name} imports {name}"


def test_ops_import_vllm_only_lazily():
    for path in _modules("ops"):
        top = _imports(path, top_level_only=True)
        assert not any(n == "vllm" or n.startswith("vllm.") for n in top), path.name


@pytest.mark.parametrize("sub", ["config.py", "planner", "ops"])
def test_no_upward_import_into_integration(sub):
    paths = [PACKAGE / sub] if sub.endswith(".py") else _modules(sub)
    for path in paths:
        bad = [n for n in _imports(path) if n.startswith("vllm_esp.integration")]
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


# how code reaches into vLLM's scheduler / KV manager / runner internals
INTERNALS = [
    r"\breq_to_blocks\b", r"\bnum_cached_block\b", r"_null_block\b", r"\b_block_hasher\b",
    r"\bget_new_blocks\(", r"(?<!super\(\))\._preempt_request\(",
    r"(?<!super\(\))\._free_request\(",
    r"\.finished_req_ids\.add\(", r"\.running\s*=", r"\.running\.(remove|append)\(",
    r"\.use_v2_model_runner\s*=", r"\.__class__\s*=", r"input_batch\.add_request\s*=",
    r"\bslot_mapping\.(gpu|cpu)\[", r"self\.positions\[", r"input_ids\.(gpu|cpu)\[",
    r"\.waiting\.(prepend_request|remove_request)\(",
]


def test_vllm_internals_are_touched_only_in_views():
    offenders = []
    for path in _modules("integration") + _modules("scheduling"):
        if path == VIEWS:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if any(re.search(p, code) for p in INTERNALS):
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
