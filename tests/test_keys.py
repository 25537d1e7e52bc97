"""The job-key reference (``python -m xcv_batch keys``) and ``--version``: every key a job file can hold — the keys an
OUT/job.yaml writes, a registered method's — with its type, default and the meaning its field's comment gives."""

from __future__ import annotations

import copy
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Union

import pytest
import yaml

import xcv_batch
from xcv_batch.cli import main
from xcv_batch.config import ComputeConfig, Job, dump_job, job_from_mapping
from xcv_batch.errors import ConfigError
from xcv_batch.keys import Entry, KeyDoc, job_keys, render_markdown, render_text, yaml_text
from xcv_batch.methods import MethodSpec, registered
from xcv_batch.methods.registry import Passes
from xcv_batch.methods.settings import METHOD_SETTINGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------- the generic generator


@dataclass(frozen=True)
class Inner:
    """A nested section.

    Only the first paragraph is its summary.
    """

    depth: int = 3  # how deep


@dataclass(frozen=True)
class Root:
    #: The colour,
    #: on two lines.
    colour: Literal["red", "blue"] = "red"
    ratio: Union[Literal["auto"], float] = 0.5  # a trailing comment
    # a remark about the code above a field is not its meaning
    plain: int = 1
    name: str = ""
    method: Literal["a", "b"] = (
        "a"
    )  # the comment of a statement over several lines
    inner: Inner = field(default_factory=Inner)
    maybe: Optional[Inner] = None  # off unless given
    plugins: Mapping[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        #: a comment inside a method belongs to no field
        limit: int = 2
        assert limit


@dataclass(frozen=True)
class Derived(Inner):
    depth: int = 5
    width: Optional[float] = None  # a field of the subclass


def test_a_dataclass_tree_gives_every_key_with_its_type_default_and_comment():
    entries = {"toy": Entry(Derived), "switchable": Entry(Optional[Inner], None), "flag": Entry(bool, True, "a switch")}
    keys = job_keys(Root, registries={"plugins": lambda: entries})
    assert keys == [
        KeyDoc("colour", "red | blue", "red", "The colour, on two lines.", ""),
        KeyDoc("ratio", "auto | float", "0.5", "a trailing comment", ""),
        KeyDoc("plain", "int", "1", "", ""),
        KeyDoc("name", "str", '""', "", ""),
        KeyDoc("method", "a | b", "a", "the comment of a statement over several lines", ""),
        KeyDoc("inner.depth", "int", "3", "how deep", "inner"),
        KeyDoc("maybe", "mapping | null", "null", "off unless given", "maybe"),
        KeyDoc("maybe.depth", "int", "3", "how deep", "maybe"),
        # a registry's entry: its summary from the nearest docstring, the base class's comments for inherited fields
        KeyDoc("plugins.toy", "mapping", "absent (off)", "A nested section.", "plugins.toy"),
        KeyDoc("plugins.toy.depth", "int", "5", "how deep", "plugins.toy"),
        KeyDoc("plugins.toy.width", "float | null", "null", "a field of the subclass", "plugins.toy"),
        KeyDoc("plugins.switchable", "mapping | null", "null", "A nested section.", "plugins.switchable"),
        KeyDoc("plugins.switchable.depth", "int", "3", "how deep", "plugins.switchable"),
        KeyDoc("plugins.flag", "bool", "true", "a switch", "plugins"),
    ]


def test_the_renderings_hold_one_key_a_line_and_escape_the_table_separator():
    keys = job_keys(Inner) + [KeyDoc("x.y", "a | b", "a", "one | other", "x")]
    assert render_text(keys) == ("[top level]\n"
                                 "depth  int    3  how deep\n"
                                 "\n"
                                 "[x]\n"
                                 "x.y    a | b  a  one | other\n")
    assert render_markdown(keys) == ("| key | type | default | meaning |\n"
                                     "|---|---|---|---|\n"
                                     "| `depth` | `int` | `3` | how deep |\n"
                                     "| `x.y` | `a \\| b` | `a` | one \\| other |\n")


def test_a_mapping_section_without_a_registry_is_refused_rather_than_left_out():
    with pytest.raises(LookupError, match="plugins"):
        job_keys(Root, registries={})


@dataclass(frozen=True)
class ComputeWithAKnob(ComputeConfig):
    knob: int = 7  # a key added to an existing section


@dataclass(frozen=True)
class JobWithAKnob(Job):
    compute: ComputeWithAKnob = field(default_factory=ComputeWithAKnob)


def test_a_key_added_to_a_section_appears_beside_the_inherited_ones():
    plain = {k.key: k for k in job_keys()}
    extended = {k.key: k for k in job_keys(JobWithAKnob)}
    assert extended["compute.knob"] == KeyDoc("compute.knob", "int", "7", "a key added to an existing section",
                                              "compute")
    assert {key: doc for key, doc in extended.items() if key != "compute.knob"} == plain


@dataclass(frozen=True)
class ToySettings:
    """A toy method."""

    gain: float = 2.0  # multiplies the map


def test_a_registered_method_brings_its_keys():
    spec = MethodSpec(name="toy", settings=ToySettings, label="Toy", implementation="toy_module:Toy",
                      passes=lambda s, h, w: Passes(forward=1))
    with registered(spec):
        keys = {k.key: k for k in job_keys()}
    assert keys["methods.toy"] == KeyDoc("methods.toy", "mapping", "absent (off)", "A toy method.", "methods.toy")
    assert keys["methods.toy.gain"] == KeyDoc("methods.toy.gain", "float", "2.0", "multiplies the map", "methods.toy")
    assert "methods.toy" not in {k.key for k in job_keys()}


# ------------------------------------------------------------------------------------------ the real job's keys


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping → dotted key of every value that is not itself a mapping."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {key: value for name, child in node.items() for key, value in _leaves(child, f"{prefix}{name}.").items()}


def _written_job_yaml(raw: dict) -> dict:
    written = yaml.safe_load(dump_job(job_from_mapping(raw)))
    written.pop("fingerprint")
    return written


def _with(raw: dict, key: str, value: Any) -> dict:
    """``raw`` with the dotted ``key`` set to ``value``."""
    raw = copy.deepcopy(raw)
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


def _accepts(raw: dict) -> bool:
    try:
        job_from_mapping(raw)
    except ConfigError:
        return False
    return True


def test_every_key_an_out_job_yaml_holds_is_listed_with_its_default():
    """What a run writes to OUT/job.yaml — every method, every section that is off by default turned on with its
    defaults — has exactly the reference's keys, each value the reference's default."""
    raw: dict = {"methods": {name: {} for name in METHOD_SETTINGS}}
    nulls = [key for key, value in _leaves(_written_job_yaml(raw)).items() if value is None]
    sections_off = [key for key in nulls if _accepts(_with(raw, key, {}))]  # a null that takes a mapping: a section
    for key in sections_off:
        raw = _with(raw, key, {})
    everything_on = _written_job_yaml(raw)
    written = _leaves(everything_on)
    reference = {k.key: k for k in job_keys()}

    # a leaf of the written job is a key with its default; its sections are keys too where they can be switched
    assert {key: reference[key].default if key in reference else "MISSING" for key in written} == \
        {key: yaml_text(value) for key, value in written.items()}
    sections = {k.key for k in reference.values() if k.type.startswith("mapping")}
    assert set(reference) == set(written) | sections
    assert sections_off, "some section of the default job is off (null); the check above turns each on"
    for key in sections_off:
        assert reference[key].default == "null"
        assert any(k.startswith(key + ".") for k in written), key


def test_every_key_has_a_meaning():
    missing = [k.key for k in job_keys() if not k.meaning]
    # Each is a field without a comment: add a `#:` line above it or a comment at the end of its line.
    assert not missing, f"{len(missing)} job keys have no meaning: {', '.join(missing)}"


def test_the_docs_reference_is_the_generated_one():
    with open(os.path.join(REPO, "docs", "reference.md"), encoding="utf-8") as fh:
        page = fh.read()
    block = re.search(r"<!-- keys:begin -->\n(.*?)<!-- keys:end -->", page, re.S)
    assert block, "docs/reference.md has no <!-- keys:begin --> … <!-- keys:end --> block: paste `keys --markdown` there"
    assert block.group(1).strip() == render_markdown(job_keys()).strip(), \
        "docs/reference.md's key table is stale: replace it with `python -m xcv_batch keys --markdown`"


# ------------------------------------------------------------------------------------------------ command line


def test_keys_prints_the_reference_and_markdown_its_table(capsys):
    assert main(["keys"]) == 0
    text = capsys.readouterr().out
    assert text == render_text(job_keys())
    listed = [line.split()[0] for line in text.splitlines() if line and not line.startswith("[")]
    assert listed == [k.key for k in job_keys()]
    assert main(["keys", "--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown(job_keys())


def test_keys_imports_no_torch():
    check = "import sys; from xcv_batch.cli import main; main(['keys']); assert 'torch' not in sys.modules, 'torch'"
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "methods.occlusion.window" in result.stdout


def test_version_is_the_distribution_version(capsys):
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        declared = tomllib.load(fh)["project"]["version"]
    assert xcv_batch.__version__ == declared == importlib.metadata.version("xcv_batch")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"xcv_batch {declared}\n"


def test_version_from_the_command_line():
    result = subprocess.run([sys.executable, "-m", "xcv_batch", "--version"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"xcv_batch {xcv_batch.__version__}\n", "")
