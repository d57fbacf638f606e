"""The layer rules of docs/DESIGN.md hold: every import of every module of pyserini_ssm/, read from DESIGN.md's own
table (so the document and the code cannot drift), and no import cycle among module-level imports.

Pure `ast` over the source files: nothing is imported, no torch, no JVM (well under a second).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyserini_ssm"
DESIGN = ROOT / "docs" / "DESIGN.md"
# Where the GPU machines run, there is no Java: these never import the first stage or Java, not even lazily.
MODELING = ("pyserini_ssm.models", "pyserini_ssm.ops", "pyserini_ssm.training")
JAVA_SIDE = ("pyserini", "jnius", "jnius_config", "pyserini_ssm.java", "pyserini_ssm.first_stage")


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def module_names() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is named by its `__init__.py`)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = module_names()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a module of ours, or the top-level name of an outside package
    line: int
    lazy: bool  # inside a function (or under `if TYPE_CHECKING:`): not run when the module is imported

    def __str__(self) -> str:
        where = MODULES[self.source].relative_to(ROOT)
        return f"{where}:{self.line} imports {self.target}{' (lazily)' if self.lazy else ''}"


def _our_module(name: str) -> str:
    """The most specific module of ours that `name` (a module, or an attribute of one) names."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _lazy_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside a function, a lambda or an `if TYPE_CHECKING:` block."""
    lazy: set[int] = set()

    def visit(node: ast.AST, inside: bool) -> None:
        if inside:
            lazy.add(id(node))
        for child in ast.iter_child_nodes(node):
            child_inside = inside or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and child in node.body:
                child_inside = True
            visit(child, child_inside)

    visit(tree, False)
    return lazy


def imports_of(module: str) -> list[Import]:
    """Every import statement of `module`, module-level and lazy; targets of ours resolved to our modules."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lazy = _lazy_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up `level - 1` packages
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pyserini_ssm import stopping` imports the module pyserini_ssm.stopping
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in dict.fromkeys(names):
            if name == "pyserini_ssm" or name.startswith("pyserini_ssm."):
                name = _our_module(name)
            found.append(Import(module, name, node.lineno, id(node) in lazy))
    return found


ALL_IMPORTS = [item for module in MODULES for item in imports_of(module)]
OUR_IMPORTS = [item for item in ALL_IMPORTS if item.target in MODULES]


# ---------------------------------------------------------------------------------------------------------------
# DESIGN.md's table


@dataclass
class Row:
    index: int
    members: list[str]  # the table's names: `errors.py`, `first_stage/`, `__init__.py`
    allowed: dict[str, bool] = field(default_factory=dict)  # member name -> lazily only
    any_above: bool = False
    outside: str = ""


def _member_module(token: str) -> str:
    """`errors.py` -> pyserini_ssm.errors, `first_stage/` -> pyserini_ssm.first_stage, `__init__.py` -> the package;
    a name in the may-import column has no suffix (`errors`)."""
    if token == "__init__.py":
        return "pyserini_ssm"
    return "pyserini_ssm." + token.removesuffix(".py").removesuffix("/").replace("/", ".")


def read_layout(text: str) -> list[Row]:
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["module", "what it holds", "may import", "outside packages"], header
    rows = []
    for line in lines[2:]:  # after the header and the --- line
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == 4, f"DESIGN.md layout row with {len(cells)} cells: {line}"
        row = Row(len(rows), re.findall(r"`([^`]+)`", cells[0]), outside=cells[3])
        for match in re.finditer(r"`([^`]+)`(\s*\(lazily\))?", cells[2]):
            row.allowed[match.group(1)] = bool(match.group(2))
        row.any_above = "any module above" in cells[2]
        rows.append(row)
    return rows


ROWS = read_layout(DESIGN.read_text(encoding="utf-8"))


def row_of(module: str) -> Row | None:
    """The row that holds `module`: its own file's, else its innermost package's."""
    best, depth = None, -1
    for row in ROWS:
        for member in row.members:
            name = _member_module(member)
            exact = member.endswith(".py") and name == module
            inside = member.endswith("/") and (module == name or module.startswith(name + "."))
            if (exact or inside) and name.count(".") + exact > depth:
                best, depth = row, name.count(".") + exact
    return best


def test_the_table_parses_into_rows_that_name_real_modules():
    assert len(ROWS) >= 20 and any(row.any_above for row in ROWS)
    for row in ROWS:
        assert row.members, f"a DESIGN.md layout row names no module: row {row.index + 1}"
        for member in row.members:
            assert _member_module(member) in MODULES, f"DESIGN.md names {member}, which is not in pyserini_ssm/"
        for name in row.allowed:
            module = _member_module(name)
            assert module in MODULES and row_of(module) is not None, (
                f"DESIGN.md row {row.members[0]} may import {name}, which is no module with a row of its own")


def test_every_module_has_a_row():
    missing = [module for module in MODULES if row_of(module) is None]
    assert not missing, f"modules without a row in docs/DESIGN.md's layout table (add one): {missing}"


def _file(module: str) -> str:
    return str(MODULES[module].relative_to(PACKAGE))


def _allowed(item: Import) -> str | None:
    """None when `item` keeps the rules, else why not."""
    source, target = row_of(item.source), row_of(item.target)
    if source is target:
        return None
    lazily_only = None
    for name, lazy in source.allowed.items():
        if row_of(_member_module(name)) is target:
            lazily_only = lazy
    if lazily_only is None and source.any_above and target.index < source.index:
        lazily_only = False
    rule = ", ".join(list(source.allowed) + ["any module above"] * source.any_above) or "nothing"
    if lazily_only is None:
        return f"{_file(item.source)} may not import {_file(item.target)} (its DESIGN.md row allows: {rule})"
    if lazily_only and not item.lazy:
        return f"{_file(item.source)} may import {_file(item.target)} only lazily, inside a function"
    return None


def test_every_import_keeps_the_layer_rules_of_design_md():
    broken = [f"{item}: {why}" for item in OUR_IMPORTS if (why := _allowed(item))]
    assert not broken, "imports that break docs/DESIGN.md's layer rules:\n" + "\n".join(broken)


def test_only_the_rows_that_name_them_import_pyserini_or_jnius():
    broken = []
    for item in ALL_IMPORTS:
        package = item.target.split(".")[0]
        if package in ("pyserini", "jnius", "jnius_config"):
            word = "pyserini" if package == "pyserini" else "jnius"
            if word not in row_of(item.source).outside:
                broken.append(str(item))
    assert not broken, "pyserini/jnius outside the rows of docs/DESIGN.md that name them:\n" + "\n".join(broken)


def test_modeling_code_never_imports_java_or_the_first_stage_even_lazily():
    broken = [str(item) for item in ALL_IMPORTS if _within(item.source, MODELING) and _within(item.target, JAVA_SIDE)]
    assert not broken, "models/, ops/ and training/ run without Java:\n" + "\n".join(broken)
    # Nor through a module they import when loaded (module-level imports, followed to the end).
    graph = module_level_graph()
    for module in MODULES:
        if _within(module, MODELING):
            reached = sorted(name for name in _reachable(graph, module) if _within(name, JAVA_SIDE))
            assert not reached, f"importing {module} loads {reached}"


def module_level_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for item in OUR_IMPORTS:
        if not item.lazy and item.target != item.source:
            graph[item.source].add(item.target)
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_module_level_imports():
    cycle = find_cycle(module_level_graph())
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


# A module past this many lines holds more than one concept: split it (docs/DESIGN.md). Generated tables are exempt.
MAX_MODULE_LINES = 600
GENERATED_MODULES = frozenset({"pyserini_ssm.pyserini_names"})


def oversized_modules(limit: int = MAX_MODULE_LINES, exempt: frozenset[str] = GENERATED_MODULES) -> list[str]:
    sizes = {module: len(path.read_text(encoding="utf-8").splitlines()) for module, path in MODULES.items()}
    return [f"{_file(module)}: {lines} lines" for module, lines in sorted(sizes.items())
            if lines > limit and module not in exempt]


def test_no_module_is_over_600_lines_except_the_generated_name_table():
    assert not oversized_modules(), "modules over 600 lines (split them along their concepts):\n" + "\n".join(
        oversized_modules())
    # The check sees a long module: without its exemption the generated table is named.
    assert [name.split(":")[0] for name in oversized_modules(exempt=frozenset())] == ["pyserini_names.py"]


# ---------------------------------------------------------------------------------------------------------------
# The checker itself catches what it should (on made-up tables and graphs, not on the package)


def test_the_checker_names_an_upward_import_and_a_lazily_only_one(monkeypatch):
    table = DESIGN.read_text(encoding="utf-8").replace(
        "| `errors`, `files`, `runs`, `pyserini_names`, `hub`, `first_stage/` (lazily) |",
        "| `errors`, `files`, `runs`, `pyserini_names`, `hub` |")
    assert table != DESIGN.read_text(encoding="utf-8")  # the topics row is where this test expects it
    lazy = Import("pyserini_ssm.topics", "pyserini_ssm.first_stage.lucene", 1, lazy=True)
    assert _allowed(lazy) is None
    with monkeypatch.context() as patch:
        patch.setattr(sys.modules[__name__], "ROWS", read_layout(table))
        assert "topics.py may not import first_stage/lucene.py" in _allowed(lazy)
    assert "only lazily" in _allowed(Import("pyserini_ssm.topics", "pyserini_ssm.first_stage.lucene", 1, lazy=False))
    upward = Import("pyserini_ssm.benchmarking", "pyserini_ssm.init", 1, lazy=True)  # a library module -> a CLI
    assert "benchmarking.py may not import init.py" in _allowed(upward)


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("source, statement, expected", [
    ("pyserini_ssm.training.loop", "from pyserini_ssm import stopping", "pyserini_ssm.stopping"),
    ("pyserini_ssm.models.scoring", "from pyserini_ssm.models import attention", "pyserini_ssm.models.attention"),
    ("pyserini_ssm.rerank", "from pyserini_ssm.reranking import RerankConfig", "pyserini_ssm.reranking"),
])
def test_imports_resolve_to_our_modules(source, statement, expected):
    assert any(item.target == expected for item in imports_of(source)), (source, statement)
