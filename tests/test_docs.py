"""The docs site builds with ``mkdocs build --strict`` (a broken link, a broken anchor, a missing page or snippet, or a
page left out of the nav fails it), and the README's own links lead to files that exist."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(root, site) -> subprocess.CompletedProcess:
    # NO_MKDOCS_2_WARNING: Material's notice about MkDocs 2 is a banner, not a finding of this build.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _copy_site_sources(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(os.path.join(REPO, "docs"), root / "docs")
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(os.path.join(REPO, name), root / name)
    return root


def test_the_docs_build_strictly(tmp_path):
    done = _build(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    # every nav page was written, and the README's snippets reached the pages that include them
    for page in ("cli", "api", "job-file", "reference", "models", "output", "ray", "ranking", "metrics",
                 "groundtruth", "performance", "reliability", "reproducibility", "extending", "layout", "seed"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    home = html.unescape(re.sub(r"<[^>]+>", "", (tmp_path / "site" / "index.html").read_text(encoding="utf-8")))
    assert 'pip install -e ".[test]"' in home and "python -m pytest -q" in home
    assert "--8<--" not in home
    api = html.unescape(re.sub(r"<[^>]+>", "", (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")))
    assert "explainer = Explainer(" in api and "--8<--" not in api
    # the key table's `\|` (escaped for GitHub) renders as a plain | inside code
    reference = html.unescape((tmp_path / "site" / "reference" / "index.html").read_text(encoding="utf-8"))
    assert "<code>predicted | label</code>" in reference and "\\|" not in reference


@pytest.mark.parametrize("link, named", [
    ("[the old page](no-such-page.md)", "no-such-page.md"),  # a missing page
    ("[a section](metrics.md#no-such-section)", "no-such-section"),  # a missing anchor
])
def test_a_broken_link_or_anchor_fails_the_build(tmp_path, link, named):
    root = _copy_site_sources(tmp_path)
    with open(root / "docs" / "cli.md", "a", encoding="utf-8") as fh:
        fh.write(f"\nSee {link}.\n")
    done = _build(root, tmp_path / "site")
    assert done.returncode != 0
    assert named in done.stdout + done.stderr


def test_a_readme_snippet_the_docs_include_cannot_go_missing(tmp_path):
    root = _copy_site_sources(tmp_path)
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert readme.count("<!-- --8<-- [start:quick-start] -->") == 1
    (root / "README.md").write_text(readme.replace("[start:quick-start]", "[start:renamed]"), encoding="utf-8")
    done = _build(root, tmp_path / "site")
    assert done.returncode != 0
    assert "quick-start" in done.stdout + done.stderr


def test_the_readme_links_lead_to_files_in_the_repository():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert "docs/reference.md" in targets and "docs/seed.md" in targets
    for target in targets:
        assert "://" not in target, f"README links outside the repository: {target}"
        path = os.path.normpath(os.path.join(REPO, target.split("#")[0]))
        assert path.startswith(REPO + os.sep), f"README links outside the repository: {target}"
        assert os.path.exists(path), f"README links to a missing file: {target}"
