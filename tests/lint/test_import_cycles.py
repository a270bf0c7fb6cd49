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


@pytest.fixture
def shop(tmp_path, monkeypatch) -> grimp.ImportGraph:
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in MODULES.items():
        (package / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return grimp.build_graph("shop", cache_dir=None)


def check(graph: grimp.ImportGraph, *ignore_imports: str):
    contract = NoImportCyclesContract(name="no cycles", session_options={"root_packages": ["shop"]},
                                      contract_options={"ignore_imports": list(ignore_imports)})
    return contract.check(graph, verbose=False)


def test_it_finds_each_cycle_even_through_an_import_inside_a_function(shop):
    result = check(shop)
    assert not result.kept
    assert result.metadata["cycles"] == [["shop.reader", "shop.writer"], ["shop.services", "shop.tasks"]]


def test_the_imports_it_is_told_to_ignore_break_no_rule(shop):
    result = check(shop, "*.tasks -> **", "shop.reader -> shop.writer")
    assert result.kept
    assert result.ignored_import_count == 2


def test_an_ignored_import_that_is_not_there_is_an_error(shop):
    with pytest.raises(MissingImport, match=re.escape("shop.models -> shop.reader")):
        check(shop, "shop.models -> shop.reader")


def test_the_cycle_it_names_is_the_shortest_through_its_first_module():
    imports = {"a": {"b", "c"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    components = strongly_connected(imports, imports)
    assert sorted(map(sorted, components)) == [["a", "b", "c"], ["d"]]
    assert shortest_cycle({"a", "b", "c"}, imports) == ["a", "c"]
