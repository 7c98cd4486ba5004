"""The package's structure: no import circle, no library module importing a command, and only
`console.say` printing from library code.

A command (entry point) is a module run as `python -m cm3leon_jax....`: one with a top-level
`if __name__ == "__main__":` block, a package's `__main__.py`, or one that defines absl flags
(flags are global to a process, so a library module must never define them). Commands may import
the library and, for the demo that chains the stages, other commands; the library may import only
the library, so that every stage's code can be reused without its command line.
"""

from __future__ import annotations

import ast
import pathlib

import pytest
import locations

PACKAGE = locations.ROOT / "cm3leon_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_command(tree: ast.Module, path: pathlib.Path) -> bool:
    if path.name == "__main__.py":
        return True
    for node in tree.body:
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test):
            return True
        call = node.value if isinstance(node, (ast.Assign, ast.Expr)) else None
        if isinstance(call, ast.Call) and ast.unparse(call.func).startswith("flags.DEFINE"):
            return True
    return False


def _imports(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Modules of the package that `module` imports, anywhere in its body (lazy imports count)."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".") if is_package else module.split(".")[:-1]
                parent = parent[:len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            # Importing a.b.c runs a/__init__ and a/b/__init__ first: those are imports too.
            while name:
                if name in known and name != module:
                    found.add(name)
                name = name.rpartition(".")[0]
    return found


def _package():
    modules, commands, graph = {}, set(), {}
    for path in sorted(PACKAGE.rglob("*.py")):
        modules[_module_name(path)] = (path, ast.parse(path.read_text(), str(path)))
    known = set(modules)
    for name, (path, tree) in modules.items():
        if _is_command(tree, path):
            commands.add(name)
        graph[name] = _imports(tree, name, path.name == "__init__.py", known)
    # Importing a package's `__init__` is what importing any of its modules does first; that edge
    # is Python's, not the author's, so package parents are left out of the graph.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return commands, graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_commands_and_imports():
    commands, graph = _package()
    assert {"cm3leon_jax.pretrain", "cm3leon_jax.data.prepare", "cm3leon_jax.superres.__main__",
            "cm3leon_jax.export.__main__"} <= commands
    # cli.py defines the shared --config / --workdir flags: command-line code, for commands only.
    assert "cm3leon_jax.cli" in commands and "cm3leon_jax.train.loop" not in commands
    assert "cm3leon_jax.train.loop" in graph["cm3leon_jax.pretrain"] | {
        d for dep in graph["cm3leon_jax.pretrain"] for d in graph[dep]}


def test_no_import_circle():
    _, graph = _package()
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_library_never_imports_a_command():
    commands, graph = _package()
    offences = sorted(f"{module} imports the command {dep}"
                      for module, deps in graph.items() if module not in commands
                      for dep in deps if dep in commands)
    assert offences == [], "\n".join(offences)


@pytest.mark.parametrize("source, expected", [
    ("if __name__ == '__main__':\n    main()\n", True),
    ("from absl import flags\n_X = flags.DEFINE_string('x', None, 'x')\n", True),
    ('"""Usage:\n    if __name__ == "__main__":\n"""\n', False),
])
def test_what_counts_as_a_command(source, expected):
    assert _is_command(ast.parse(source), pathlib.Path("m.py")) is expected


def _prints(tree: ast.Module) -> list[int]:
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id == "print"]


def test_library_prints_only_through_console():
    """On a pod every host runs the same code: library output goes through `console.say`
    (process 0 only); commands may print their own results."""
    commands, _ = _package()
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if module in commands or module == "cm3leon_jax.console":
            continue
        offences += [f"{module}:{line}" for line in _prints(ast.parse(path.read_text()))]
    assert offences == [], "print() in library code (use console.say): " + ", ".join(offences)


def test_console_says_on_process_zero_only(monkeypatch, capsys):
    import jax  # noqa: PLC0415

    from cm3leon_jax import console  # noqa: PLC0415

    console.say("from process 0")
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    console.say("from process 1")
    assert capsys.readouterr().out == "from process 0\n"
