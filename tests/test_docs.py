"""docs/reliability.md names the test that proves each row: a renamed or moved test must take its
row along, or the row would point at nothing."""
import ast
import re
from pathlib import Path

from tests.conftest import PROJECT_ROOT

RELIABILITY = PROJECT_ROOT / "docs" / "reliability.md"
TEST_REFERENCE = re.compile(r"`([\w/]+\.py)::([\w:]+)(?:\[[^\]]*\])?`")


def defined_names(path: Path) -> set[str]:
    """``Class::test`` and ``test`` for every test function and class the module defines."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
            names.update(f"{node.name}::{item.name}" for item in node.body if isinstance(item, ast.FunctionDef))
        elif isinstance(node, ast.FunctionDef):
            names.add(node.name)
    return names


def test_every_test_that_docs_reliability_names_exists():
    references = TEST_REFERENCE.findall(RELIABILITY.read_text())
    assert len(references) > 50, "the pattern no longer finds the table's references"
    missing = [f"{path}::{name}" for path, name in references
               if not (PROJECT_ROOT / "tests" / path).is_file()
               or name not in defined_names(PROJECT_ROOT / "tests" / path)]
    assert missing == []
