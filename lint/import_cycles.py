"""An import-linter contract: no import cycle among the site's modules, whether the imports sit at
the top of a module or inside a function. Celery's pairs are the one exception: a service imports
its task module to send a task, and the task imports the service inside its body. The modules
named by ``task_modules`` may close a cycle only by imports inside their functions; what they
import at the top counts as any other import. ``ignore_imports`` drops imports by name."""
from __future__ import annotations

import ast
import importlib.util
from collections import deque
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import Path

from grimp import ImportGraph
from importlinter.application import contract_utils, output
from importlinter.application.contract_utils import AlertLevel
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


class NoImportCyclesContract(Contract):
    type_name = "no_import_cycles"

    ignore_imports = fields.SetField(subfield=fields.ImportExpressionField(), required=False)
    task_modules = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        removal = contract_utils.remove_ignored_imports_and_report(
            graph=graph, ignore_imports=self.ignore_imports,  # type: ignore[arg-type]
            unmatched_alerting=AlertLevel.ERROR)
        roots = set(self.session_options["root_packages"])
        ours = {module for module in graph.modules if module.split(".")[0] in roots}
        imports = {module: graph.find_modules_directly_imported_by(module) & ours for module in ours}
        patterns: list[str] = self.task_modules or []  # type: ignore[assignment]
        for module in ours:
            if any(fnmatchcase(module, pattern) for pattern in patterns):
                imports[module] -= imported_only_inside_functions(graph, module, imports[module])
        cycles = [shortest_cycle(component, imports) for component in strongly_connected(ours, imports)
                  if len(component) > 1]
        return ContractCheck(kept=not cycles, warnings=list(removal.warnings),
                             ignored_import_count=len(removal.removed_imports),
                             metadata={"cycles": sorted(cycles)})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for cycle in check.metadata["cycles"]:
            output.print_error(" -> ".join([*cycle, cycle[0]]), bold=False)
            output.new_line()


def imported_only_inside_functions(graph: ImportGraph, module: str, imported: set[str]) -> set[str]:
    """Those of ``imported`` that ``module`` imports in function bodies alone, never at its top."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"no source for {module}"
    tree = ast.parse(Path(spec.origin).read_text())
    in_functions = {inner.lineno for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                    for inner in ast.walk(node) if isinstance(inner, ast.Import | ast.ImportFrom)}
    return {other for other in imported
            if all(detail["line_number"] in in_functions
                   for detail in graph.get_import_details(importer=module, imported=other))}


def strongly_connected(modules: Iterable[str], imports: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components, without recursion."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(imports[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, pending = work[-1]
            following = next(pending, None)
            if following is not None:
                if following not in index:
                    index[following] = low[following] = len(index)
                    stack.append(following)
                    on_stack.add(following)
                    work.append((following, iter(sorted(imports[following]))))
                elif following in on_stack:
                    low[module] = min(low[module], index[following])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == module:
                        break
                components.append(component)
    return components


def shortest_cycle(component: set[str], imports: dict[str, set[str]]) -> list[str]:
    """The shortest cycle through the component's first module, as the modules in import order."""
    start = min(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for following in sorted(imports[module] & component):
            if following == start:
                path = [module]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1]
            if following not in came_from:
                came_from[following] = module
                queue.append(following)
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")
