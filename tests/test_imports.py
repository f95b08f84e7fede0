"""The package's import graph, read from the source with `ast`: every import, at module level and inside functions
(an import inside a function is still a dependency, only a later one). Dependencies point one way, so no cycle."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file for every module of the package at `root` (a folder named like the package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports. `from sft.x import y` is an edge to sft.x.y when that is a module,
    else to sft.x (y is a name defined there); relative imports are resolved."""
    modules = module_names(root)
    package = root.name
    graph = {}
    for name, path in modules.items():
        edges = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `import sft.a.b` with b a name: the module sft.a
                    target = target.rpartition(".")[0]
                if target.split(".")[0] == package and target in modules and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_sft_has_no_import_cycle():
    cycle = find_cycle(import_graph(REPO / "sft"))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_imports_inside_functions(tmp_path):
    """The shape of the cycle sft had (data -> recipe -> hub -> model_card -> hub, through imports inside
    functions and `from package import module`), planted in a small package."""
    pkg = tmp_path / "pkg"
    (pkg / "hub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data.py").write_text("def f():\n    from pkg.recipe import load\n")
    (pkg / "recipe.py").write_text("import os\n\ndef load():\n    from pkg.hub import publish\n")
    (pkg / "hub" / "__init__.py").write_text("")
    (pkg / "hub" / "publish.py").write_text("def push():\n    from . import model_card\n")
    (pkg / "hub" / "model_card.py").write_text("def card():\n    from pkg.hub.publish import push\n")
    graph = import_graph(pkg)
    assert graph["pkg.data"] == {"pkg.recipe"} and graph["pkg.recipe"] == {"pkg.hub.publish"}
    assert find_cycle(graph) == ["pkg.hub.publish", "pkg.hub.model_card", "pkg.hub.publish"]
    (pkg / "hub" / "model_card.py").write_text("import json\n")
    assert find_cycle(import_graph(pkg)) is None


def test_the_recipe_depends_on_no_later_stage():
    """recipe <- data, templates, masks <- model <- train; launch, hub and after_training depend on the recipe. The
    recipe may read four leaves of later packages (they import nothing of sft but errors and each other): what
    this machine can do (sft.train.hardware), the launch profiles and their fixes (sft.launch.profiles), the Hub
    client's basics (sft.hub.addresses: hf:// recipe addresses, the token), and whether a chat_template value is
    inline Jinja rather than a path (sft.templates.chat)."""
    graph = import_graph(REPO / "sft")
    later = ("sft.data", "sft.masks", "sft.templates", "sft.model", "sft.run", "sft.train", "sft.launch",
             "sft.commands", "sft.hub", "sft.after_training", "sft.generation", "sft.evaluation", "sft.merging")
    leaves = {"sft.train.hardware", "sft.launch.profiles", "sft.hub.addresses", "sft.templates.chat"}
    for leaf in leaves:
        assert graph[leaf] <= {"sft.errors"} | leaves, f"{leaf} imports {', '.join(sorted(graph[leaf]))}"
    for module, edges in graph.items():
        if module == "sft.recipe" or module.startswith("sft.recipe."):
            wrong = sorted(e for e in edges - leaves if e.startswith(later))
            assert not wrong, f"{module} imports {', '.join(wrong)}"
