"""No import cycles in recbole_mm, and every module imports on its own.

The import graph is read from the source (every ``import`` / ``from ... import``, at module level or
inside a function, since a lazy import that closes a cycle is still a cycle), plus the one import
made by name: the registry imports every module of ``recbole_mm.model`` to find the models.
"""
import ast
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT

PACKAGE_DIR = os.path.join(REPO_ROOT, "recbole_mm")


def all_modules():
    """``{module name: file}`` of every module under recbole_mm/."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for file in files:
            if not file.endswith(".py"):
                continue
            parts = os.path.relpath(os.path.join(folder, file), REPO_ROOT)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = os.path.join(folder, file)
    return modules


def import_graph():
    modules = all_modules()
    packages = {name for name, path in modules.items() if path.endswith("__init__.py")}
    graph = {}
    for name, path in modules.items():
        package = name if name in packages else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    # by name: registry._our_model_classes imports every module of recbole_mm.model
    graph["recbole_mm.registry"] |= {m for m in modules if m.startswith("recbole_mm.model.")
                                     and m.count(".") == 2 and m not in packages}
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_import_graph_is_acyclic():
    graph = import_graph()
    assert "recbole_mm.launcher" in graph["recbole_mm.cli"]  # the graph sees lazy imports
    assert "recbole_mm.config" in graph["recbole_mm.launcher"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_in_a_fresh_interpreter():
    """Each module is imported first, alone, in a process where no recbole_mm module is loaded yet
    (a forked child of an interpreter that only preloaded the third-party libraries)."""
    names = sorted(all_modules())
    script = textwrap.dedent("""
        import importlib, os, sys
        import numpy, pandas, scipy.sparse, torch, recbole.config  # third-party only: shared, fast
        assert not [m for m in sys.modules if m.split(".")[0] == "recbole_mm"]
        failures = []
        for name in sys.argv[1:]:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                try:
                    importlib.import_module(name)
                    message = ""
                except BaseException as err:  # noqa: BLE001
                    message = f"{name}: {type(err).__name__}: {err}"
                os.write(write, message.encode()[:4000])
                os._exit(0)
            os.close(write)
            message = os.read(read, 4096).decode()
            os.close(read)
            os.waitpid(pid, 0)
            if message:
                failures.append(message)
        print("\\n".join(failures))
        sys.exit(1 if failures else 0)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO_ROOT}
    result = subprocess.run([sys.executable, "-c", script, *names], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
