"""The Extending page's recipes are what the tests run: every line of each recipe's code appears in the test that
follows it, except the lines that must differ there — imports relative to the package (a test imports absolutely),
the registration call (a test registers for a block, then unregisters) and the "module:Name" references (a test's
classes live in the test module)."""

from __future__ import annotations

import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(REPO, "docs", "extending.md")

#: Each recipe (the page's second-level heading) → the test file that follows it.
FOLLOWED_BY = {
    "A new attribution method": "tests/test_extending.py",
    "A new quality metric": "tests/test_extending.py",
    "A new data source": "tests/test_source_and_model_registries.py",
    "A new model kind": "tests/test_source_and_model_registries.py",
    "A new map format": "tests/test_map_formats.py",
}

#: Lines a test cannot copy word for word (see the module docstring).
DIFFERS_IN_A_TEST = re.compile(r"^\s*(from \S+ import |import |register\(|\w+=\"[\w.]*:\w+\")")


def recipes() -> dict[str, list[str]]:
    """Heading → the code lines of its ```python blocks."""
    text = open(PAGE, encoding="utf-8").read()
    found = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
        found[title] = [line.rstrip() for block in blocks for line in block.splitlines() if line.strip()]
    return found


def test_every_recipe_on_the_page_has_a_test():
    assert set(recipes()) == set(FOLLOWED_BY)


@pytest.mark.parametrize("title", sorted(FOLLOWED_BY))
def test_the_recipe_code_is_the_tests_code(title):
    lines = recipes()[title]
    test_source = open(os.path.join(REPO, FOLLOWED_BY[title]), encoding="utf-8").read()
    copied = [line for line in lines if not DIFFERS_IN_A_TEST.match(line)]
    missing = [line for line in copied if line.strip() not in test_source]
    assert missing == [], f"{title}: lines of the recipe that its test does not run"


def test_the_map_format_test_implements_every_method_the_recipe_names():
    """That recipe is a protocol in prose: each ``name(…)`` it names is a method the test's toy format defines."""
    text = open(PAGE, encoding="utf-8").read()
    section = re.split(r"^## ", text, flags=re.M)
    (recipe,) = [part for part in section if part.startswith("A new map format")]
    named = set(re.findall(r"`(?:\w+\.)?(\w+)\(", recipe)) - {"register", "MapFormatSpec", "MapUnreadable",
                                                                "StoredMaps", "MapCheck", "Writer", "Reader"}
    test_source = open(os.path.join(REPO, FOLLOWED_BY["A new map format"]), encoding="utf-8").read()
    assert {"prepare", "open_shard", "check", "read", "stored"} <= named
    assert sorted(name for name in named if f"def {name}(" not in test_source) == []
