"""The package's shape: no import cycles between zephyr's modules, and importing zephyr or building its configs
changes nothing in the process (logging, warning filters and the environment are set up when a command starts:
zephyr/logs.py, stages/common.py), so zephyr can be used as a library."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "zephyr"


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """module -> the zephyr modules it imports anywhere in its body (lazy imports inside functions included:
    a cycle hidden in a function is still a cycle, and breaks as soon as someone hoists the import)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target not in (name, "zephyr"):
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_zephyr_modules():
    graph = import_graph()
    assert "zephyr.recipe" in graph and "zephyr.compat" in graph["zephyr.recipe"]  # the graph sees real imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


SNAPSHOT = """
import json, logging, os, pkgutil, warnings, importlib
def state():
    return {"env": dict(os.environ), "filters": [repr(f) for f in warnings.filters],
            "root": [repr(h) for h in logging.getLogger().handlers], "root_level": logging.getLogger().level,
            "levels": {n: logging.getLogger(n).level for n in ("zephyr", "bitsandbytes.backends.cpu.ops")}}
import torch, transformers, trl, datasets, peft  # the libraries' own import-time changes are not ours
before = state()
import zephyr
for info in pkgutil.walk_packages(zephyr.__path__, "zephyr."):
    importlib.import_module(info.name)
from zephyr.configs import ZephyrDPOConfig, ZephyrSFTConfig
for config in (ZephyrSFTConfig, ZephyrDPOConfig):  # building a config is not starting a stage either
    config(output_dir="/tmp/unused", hub_token="hf_FAKE", dataset_num_proc=64, gradient_checkpointing=True)
after = state()
print(json.dumps({k: [before[k], after[k]] for k in before if before[k] != after[k]}))
"""


def test_importing_zephyr_changes_no_process_state():
    proc = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    changed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert changed == {}, changed
