"""The contract that `make lint` holds the site to: no import cycle, even through an import inside
a function, except the ones its configuration names."""
import re

import grimp
import pytest
from importlinter.domain.helpers import MissingImport

from lint.import_cycles import NoImportCyclesContract, shortest_cycle, strongly_connected

MODULES = {
    "tasks": "def run():\n    from shop import services\n",
    "services": "from shop import tasks, models\n",
    "models": "",
    "reader": "from shop import models\n\ndef refresh():\n    from shop import writer\n",
    "writer": "from shop import reader\n",
}


def package(tmp_path, monkeypatch, name: str, modules: dict[str, str]) -> grimp.ImportGraph:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for module, source in modules.items():
        (folder / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return grimp.build_graph(name, cache_dir=None)


@pytest.fixture
def shop(tmp_path, monkeypatch) -> grimp.ImportGraph:
    return package(tmp_path, monkeypatch, "shop", MODULES)


def check(graph: grimp.ImportGraph, *ignore_imports: str, task_modules: tuple[str, ...] = (), root: str = "shop"):
    contract = NoImportCyclesContract(name="no cycles", session_options={"root_packages": [root]},
                                      contract_options={"ignore_imports": list(ignore_imports),
                                                        "task_modules": list(task_modules)})
    return contract.check(graph, verbose=False)


def test_it_finds_each_cycle_even_through_an_import_inside_a_function(shop):
    result = check(shop)
    assert not result.kept
    assert result.metadata["cycles"] == [["shop.reader", "shop.writer"], ["shop.services", "shop.tasks"]]


def test_the_imports_it_is_told_to_ignore_break_no_rule(shop):
    result = check(shop, "*.tasks -> **", "shop.reader -> shop.writer")
    assert result.kept
    assert result.ignored_import_count == 2


def test_a_task_module_may_close_a_cycle_only_by_an_import_inside_a_function(shop):
    result = check(shop, task_modules=("*.tasks",))
    assert result.metadata["cycles"] == [["shop.reader", "shop.writer"]]


def test_what_a_task_module_imports_at_its_top_still_counts(tmp_path, monkeypatch):
    graph = package(tmp_path, monkeypatch, "depot", {
        "tasks": "from depot import services\n\ndef run():\n    from depot import models\n",
        "services": "from depot import tasks\n",
        "models": "from depot import tasks\n",
    })
    result = check(graph, task_modules=("*.tasks",), root="depot")
    assert result.metadata["cycles"] == [["depot.services", "depot.tasks"]]


def test_an_ignored_import_that_is_not_there_is_an_error(shop):
    with pytest.raises(MissingImport, match=re.escape("shop.models -> shop.reader")):
        check(shop, "shop.models -> shop.reader")


def test_the_cycle_it_names_is_the_shortest_through_its_first_module():
    imports = {"a": {"b", "c"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    components = strongly_connected(imports, imports)
    assert sorted(map(sorted, components)) == [["a", "b", "c"], ["d"]]
    assert shortest_cycle({"a", "b", "c"}, imports) == ["a", "c"]
