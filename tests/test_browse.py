"""``browse`` in a real browser (Debian's headless Chromium through Playwright): what a person sees on the list, an
image's page and the disagreement views of a real tiny run, and that no request leaves 127.0.0.1. Every claim of
docs/browse.md is checked here."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.parse
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats as scipy_stats

from browse_helpers import IDS, METHODS, ODD_NAME, serving, tree
from browser import chromium_browser
from xcv_batch.metrics.registry import metric_info
from xcv_batch.output.results import open_results
from xcv_batch.report import map_agreement
from xcv_batch.report.labels import method_label
from xcv_batch.report.panel import display_map, is_signed, overlay


@pytest.fixture(scope="module")
def server(browse_run):
    before = tree(browse_run)
    with serving(browse_run) as server:
        yield server
    assert tree(browse_run) == before  # nothing written into OUT, nothing touched


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as browser:
        yield browser


@pytest.fixture(scope="module")
def requests_seen():
    return []


@pytest.fixture
def page(browser, requests_seen):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.on("request", lambda request: requests_seen.append(request.url))
    yield page
    context.close()


@pytest.fixture(scope="module")
def rows(browse_run):
    return open_results(browse_run).rows().sort_values(["index", "method"]).reset_index(drop=True)


def listed_ids(page) -> list[str]:
    return page.locator("#images a.image-link").all_inner_texts()


def path_of(url: str) -> str:
    return urllib.parse.urlsplit(url).path


def not_blank(path) -> bool:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
    return pixels.std() > 10  # a blank page is one colour; text, tables and maps spread the values


def loaded_widths(page, selector: str) -> list[int]:
    page.wait_for_load_state("networkidle")
    return page.eval_on_selector_all(
        selector, "els => els.map(e => { e.scrollIntoView(); return e.complete ? e.naturalWidth : -1; })")


def test_the_list_shows_the_runs_images_with_loaded_thumbnails(server, page, tmp_path):
    page.goto(server.url)
    assert listed_ids(page) == IDS  # index order: every image of the run, the failed one too
    assert page.locator("#count").inner_text() == f"{len(IDS)} of {len(IDS)} images"
    assert page.locator("select[name=per] option[selected]").inner_text() == "20 a page"
    header = page.locator("#images tr").first.locator("th").all_inner_texts()
    assert header[-len(METHODS):] == [method_label(m) for m in METHODS]
    # the input and each method's map of the images whose rows are ok; the image that is not one says failed
    widths = loaded_widths(page, "img.thumb")
    assert len(widths) == (len(IDS) - 1) * (1 + len(METHODS)) + 1
    assert all(width == 32 for width in widths)  # the run's 32 pixels, shown 96 wide
    assert set(page.eval_on_selector_all("img.thumb", "els => els.map(e => e.clientWidth)")) == {96}
    results = open_results(server.app.index.out)
    for method in METHODS:  # the thumbnails are show's drawing, pixel for pixel
        src = page.locator(f'img[alt="{method} map of image 2"]').get_attribute("src")
        drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
        np.testing.assert_array_equal(drawn, expected_picture(results, "coffee.png", method))
    failed = page.locator('tr[data-index="4"] td.failed')
    assert failed.count() == len(METHODS) and "not an image" in failed.first.get_attribute("title")
    # names are shown as text, never as markup
    assert page.locator("#images a.image-link").nth(5).inner_text() == ODD_NAME
    assert page.locator("#images b").count() == 0
    page.screenshot(path=tmp_path / "list.png", full_page=True)
    assert not_blank(tmp_path / "list.png")


@pytest.mark.parametrize("method", [None, "occlusion"])
@pytest.mark.parametrize("descending", [False, True])
def test_sorting_by_a_metric_gives_the_order_pandas_gives(server, page, rows, method, descending):
    page.goto(server.url)
    page.select_option("select[name=sort]", "sensitivity_max")
    page.select_option("select[name=method]", method or "")
    if descending:
        page.check("input[name=desc]")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "sort=sensitivity_max" in url)
    if method is None:  # the image's methods together: their mean
        values = rows.groupby("index")["sensitivity_max"].mean()
    else:
        values = rows[rows.method == method].set_index("index")["sensitivity_max"]
    expected = values.sort_values(ascending=not descending, kind="stable", na_position="last").index
    ids = rows.drop_duplicates("index").set_index("index")["image_id"]
    assert listed_ids(page) == [ids[i] for i in expected]
    shown = page.locator("td.sort-value").all_inner_texts()
    assert shown[0] == f"{values[expected[0]]:.4g}" and shown[-1] == "–"  # the failed image: no value, last


def test_sorting_by_a_text_column_of_all_methods_sorts_their_distinct_values(server, page):
    page.goto(server.url + "?sort=status&desc=1")
    assert page.locator("td.sort-value").all_inner_texts() == ["ok"] * 5 + ["error"]
    assert listed_ids(page)[-1] == "notes.jpg"


def test_filtering_keeps_the_images_whose_rows_match(server, page, rows):
    page.goto(server.url + "?" + urllib.parse.urlencode({"col": "status", "op": "eq", "val": "error"}))
    assert listed_ids(page) == ["notes.jpg"]
    page.goto(server.url)
    page.select_option("select[name=col]", "image_id")
    page.select_option("select[name=op]", "contains")
    page.fill("input[name=val]", "NESTED/")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "val=" in url)
    assert listed_ids(page) == ["nested/rocket.jpg"]
    assert page.locator("#count").inner_text() == f"1 of {len(IDS)} images"
    # below, above, differs: of one method's row, as pandas compares
    occlusion = rows[rows.method == "occlusion"].set_index("index")
    middle = float(occlusion["sensitivity_max"].median())
    ids = occlusion["image_id"]
    for op, keep in [("lt", occlusion["sensitivity_max"] < middle), ("ge", occlusion["sensitivity_max"] >= middle),
                     ("ne", occlusion["status"] != "ok")]:
        column, value = ("status", "ok") if op == "ne" else ("sensitivity_max", repr(middle))
        page.goto(server.url + "?" + urllib.parse.urlencode({"method": "occlusion", "col": column, "op": op,
                                                              "val": value}))
        assert listed_ids(page) == ids[keep].tolist(), op


def test_pages_read_only_the_maps_they_show_and_the_arrow_keys_turn_them(browse_run, page):
    with serving(browse_run) as server:  # its own: nothing drawn yet
        page.goto(server.url + "?per=2&sort=image_id&desc=1")
        assert listed_ids(page) == [IDS[5], IDS[4]]
        assert page.locator(".page-of").first.inner_text() == "page 1 of 3"
        widths = loaded_widths(page, "img.thumb")
        assert len(widths) == 1 + (1 + len(METHODS)) and all(w == 32 for w in widths)
        # the odd image's input and maps, and notes.jpg's input (its rows failed: no map to read)
        assert server.app.renderer.reads == 2 + len(METHODS)
        page.keyboard.press("ArrowRight")
        page.wait_for_url(lambda url: "page=2" in url)
        assert listed_ids(page) == [IDS[3], IDS[2]]
        page.keyboard.press("ArrowLeft")
        page.wait_for_url(lambda url: "page=" not in url)
        assert listed_ids(page) == [IDS[5], IDS[4]]


def expected_picture(results, image_id: str, method: str) -> np.ndarray:
    """show's drawing of the map over the image in grey (panel.display_map + overlay), as 8-bit RGB."""
    shown = display_map(results.attribution(image_id, method), is_signed(method, results.job["methods"][method]))
    gray = results.input_image(image_id).mean(axis=2)
    rgba = overlay(shown)
    drawn = gray[..., None] * (1 - rgba[..., 3:]) + rgba[..., :3] * rgba[..., 3:]
    return np.round(drawn * 255).astype(np.uint8)


def test_the_image_page_shows_every_method_as_show_draws_it(server, page, rows, browse_run, tmp_path):
    page.goto(server.url)
    page.click("text=chelsea.png")
    page.wait_for_url(lambda url: path_of(url) == "/image/1")
    assert page.locator("h1").inner_text() == "chelsea.png"
    assert page.locator("#maps figcaption b.method").all_inner_texts() == [method_label(m) for m in METHODS]
    widths = loaded_widths(page, "#maps img")
    assert len(widths) == 1 + 2 * len(METHODS) and all(w > 0 for w in widths)  # input, each map and its bar
    # every map is show's rendering, pixel for pixel
    results = open_results(browse_run)
    for method in METHODS:
        src = page.locator(f'#maps img[alt="{method} map"]').get_attribute("src")
        png = page.request.get(urllib.parse.urljoin(server.url, src)).body()
        drawn = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        np.testing.assert_array_equal(drawn, expected_picture(results, "chelsea.png", method))
    # every row of the image, and each method's rank per metric on it
    mine = rows[rows.image_id == "chelsea.png"]
    table = page.locator("#rows tr")
    assert table.count() == 1 + len(mine)
    header = table.first.locator("th").all_inner_texts()
    assert header == list(rows.columns)
    methods_shown = [table.nth(i + 1).locator("td").nth(header.index("method")).inner_text()
                     for i in range(len(mine))]
    assert methods_shown == sorted(mine.method)
    ranks = page.locator("#ranks tr")
    for r, metric in enumerate(["sensitivity_max", "sparseness", "effective_complexity"]):
        values = mine.set_index("method")[metric]
        oriented = -values if metric_info(metric).direction == "higher" else values
        expected = oriented.rank(method="average")
        cells = ranks.nth(r + 1).locator("td").all_inner_texts()
        assert cells[1:] == [f"{expected[m]:.4g}" for m in METHODS]
    page.screenshot(path=tmp_path / "image.png", full_page=True)
    assert not_blank(tmp_path / "image.png")


def test_previous_and_next_follow_the_lists_sort_and_filter(server, page, rows):
    values = rows[rows.method == "integrated_gradients"].set_index("index")
    values = values[values["status"] == "ok"]["sparseness"]  # the filter keeps ok rows: notes.jpg is left out
    order = values.sort_values(ascending=False, kind="stable", na_position="last").index.tolist()
    assert len(order) == 5
    query = "?sort=sparseness&method=integrated_gradients&desc=1&col=status&op=eq&val=ok&per=2"
    page.goto(server.url + query)
    page.locator("#images a.image-link").first.click()
    page.wait_for_url(lambda url: path_of(url) == f"/image/{order[0]}")
    assert page.locator("a[rel=prev]").count() == 0
    for step, index in enumerate(order[1:]):
        if step % 2:
            page.click("a[rel=next]")
        else:
            page.keyboard.press("ArrowRight")
        page.wait_for_url(lambda url: path_of(url) == f"/image/{index}")
    assert page.locator("a[rel=next]").count() == 0
    page.keyboard.press("ArrowLeft")
    page.wait_for_url(lambda url: path_of(url) == f"/image/{order[-2]}")
    page.click("text=back to the list")  # the 4th image: on the 2nd page of 2
    page.wait_for_url(lambda url: path_of(url) == "/" and "page=2" in url)
    ids = rows.drop_duplicates("index").set_index("index")["image_id"]
    assert listed_ids(page) == [ids[order[2]], ids[order[3]]]


def test_a_bad_id_method_or_path_gets_a_page_saying_so(server, page):
    for path, status in [("image/99", 404), ("image/abc", 404), ("find?id=nope.png", 404),
                         ("thumb/0/nope.png", 404), ("nothing", 404), ("image/1?sort=../../etc/passwd", 400),
                         ("find?id=../job.yaml", 400), ("thumb/0/..%2f..%2fjob.yaml.png", 400),
                         ("?method=occlusion%2f..", 400)]:
        response = page.goto(server.url + path)
        assert response.status == status, path
        assert page.locator("h1").inner_text() == {404: "Not found", 400: "Refused"}[status]
    response = page.goto(server.url + "find?id=" + urllib.parse.quote(ODD_NAME))
    assert response.status == 200 and page.locator("h1").inner_text() == ODD_NAME


def spearman_mean(results, image_id: str) -> float:
    maps = [results.attribution(image_id, m).sum(axis=0).ravel() for m in METHODS]
    return float(np.mean([scipy_stats.spearmanr(a, b).statistic for a, b in combinations(maps, 2)]))


def kendall_mean(rows: pd.DataFrame, image_id: str) -> float:
    mine = rows[(rows.image_id == image_id) & (rows.status == "ok")].set_index("method").loc[METHODS]
    metrics = ["sensitivity_max", "sparseness", "effective_complexity"]
    oriented = {m: -mine[m] if metric_info(m).direction == "higher" else mine[m] for m in metrics}
    return float(np.nanmean([scipy_stats.kendalltau(oriented[a], oriented[b]).statistic
                             for a, b in combinations(metrics, 2)]))


@pytest.mark.parametrize("view", ["maps", "metrics"])
def test_the_disagreement_views_list_the_lowest_agreement_first(server, page, rows, browse_run, view, tmp_path):
    page.goto(server.url)
    page.click({"maps": "text=Maps disagree", "metrics": "text=Metrics disagree"}[view])
    page.wait_for_url(f"**/disagree/{view}")
    results = open_results(browse_run)
    ok_ids = [i for i in IDS if i != "notes.jpg"]
    value = {i: spearman_mean(results, i) if view == "maps" else kendall_mean(rows, i) for i in ok_ids}
    listed = listed_ids(page)
    assert sorted(listed) == sorted(IDS) and listed[-1] == "notes.jpg"  # no value: last
    # lowest first, by the oracle's values (equal values, such as τ = 1/3 on three images, in any order)
    ordered = [value[i] for i in listed[:-1]]
    assert all(a <= b + 1e-12 for a, b in zip(ordered, ordered[1:]))
    shown = page.locator("td.value").all_inner_texts()
    assert shown == [f"{value[i]:.4g}" for i in listed[:-1]] + ["–"]
    assert all(w == 32 for w in loaded_widths(page, "img.thumb"))
    if view == "maps":  # summarize stored the values beside the run: none computed here
        assert page.locator("#progress").inner_text() == ("Values for 5 of 5 images from map_agreement.parquet "
                                                          "(written by summarize), 0 computed by browse.")
        assert page.locator("meta[http-equiv=refresh]").count() == 0
    page.screenshot(path=tmp_path / f"{view}.png", full_page=True)
    assert not_blank(tmp_path / f"{view}.png")
    reads = server.app.renderer.reads
    page.reload()
    assert listed_ids(page) == listed and server.app.renderer.reads == reads  # computed once, kept


def test_without_stored_values_the_maps_view_shows_progress_then_computes_them(browse_run, page, tmp_path,
                                                                                monkeypatch):
    """Two images' values left out of the stored file: the page says how far it got and reloads itself, instead of
    waiting for the maps to be read; the values it then lists are the ones summarize stored."""
    out = str(tmp_path / "out")
    shutil.copytree(browse_run, out)
    stored = pd.read_parquet(os.path.join(browse_run, map_agreement.FILE))
    path = os.path.join(out, map_agreement.FILE)
    table = pa.Table.from_pandas(stored[stored["index"] >= 2], schema=map_agreement.SCHEMA, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)
    release = threading.Event()
    computed = map_agreement.agreement

    def held_back(*args, **kwargs):  # the computation waits until the test has seen the page say so
        release.wait(60)
        yield from computed(*args, **kwargs)

    monkeypatch.setattr(map_agreement, "agreement", held_back)
    before = tree(out)
    with serving(out) as server:
        page.goto(server.url + "disagree/maps")
        assert page.locator("#progress").inner_text().startswith(
            "Computed for 3 of 5 images; the others are being read now (this page reloads every 2 s).")
        assert page.locator("meta[http-equiv=refresh]").get_attribute("content") == "2"
        # the stored three have a value; the two left out and the image with no map do not
        assert page.locator("td.value").all_inner_texts().count("–") == 3
        release.set()
        page.wait_for_selector("#progress.note", timeout=60_000)  # after a reload of the page by itself
        assert page.locator("#progress").inner_text() == ("Values for 3 of 5 images from map_agreement.parquet "
                                                          "(written by summarize), 2 computed by browse.")
    listed = listed_ids(page)
    by_id = dict(zip(stored["image_id"], stored["map_agreement"]))
    assert page.locator("td.value").all_inner_texts() == [f"{by_id[i]:.4g}" for i in listed[:-1]] + ["–"]
    assert tree(out) == before  # computed in memory: nothing written


def test_the_report_opens_from_browse_and_links_into_it(server, page, browse_run):
    page.goto(server.url)
    page.click("nav >> text=Report")
    page.wait_for_url("**/report")
    assert page.locator("h1").inner_text().startswith("xcv_batch report")
    assert "python -m xcv_batch browse OUT" in page.content()
    # every image id of the gallery is a link to its page; the odd name arrives whole
    links = page.locator("#gallery a.image-id")
    assert sorted(links.all_inner_texts()) == sorted(i for i in IDS if i != "notes.jpg")
    page.locator("#gallery a.image-id", has_text=ODD_NAME).click()
    page.wait_for_url(lambda url: path_of(url) == f"/image/{IDS.index(ODD_NAME)}")
    assert page.locator("h1").inner_text() == ODD_NAME
    page.go_back()
    page.click("#browse-nav a")
    page.wait_for_url(server.url)
    assert listed_ids(page) == IDS


def test_the_report_opened_from_disk_has_no_link_into_browse(browse_run, browser):
    page = browser.new_page()  # not the page fixture's: its requests (file://) are not browse's
    page.goto(Path(browse_run, "report.html").as_uri())
    ids = page.locator("#gallery .image-id")
    assert sorted(ids.all_inner_texts()) == sorted(i for i in IDS if i != "notes.jpg")
    assert page.locator("#gallery a.image-id").count() == 0 and page.locator("#browse-nav").count() == 0
    # the gallery's only link stays inside the page (to its failures)
    assert page.eval_on_selector_all("#gallery a", "links => links.map(a => a.getAttribute('href'))") == ["#failures"]
    page.close()


def test_no_request_leaves_the_loopback_address(server, page, requests_seen):
    page.goto(server.url + "image/0")
    page.wait_for_load_state("networkidle")
    seen = [urllib.parse.urlsplit(url) for url in requests_seen]
    assert len(seen) > 5 and {url.scheme for url in seen} <= {"http", "data"}
    assert {url.hostname for url in seen if url.scheme != "data"} == {"127.0.0.1"}


def test_pages_forbid_loading_anything_from_elsewhere(server, page):
    page.goto(server.url)
    blocked = page.evaluate("""() => new Promise(resolve => {
        document.addEventListener("securitypolicyviolation", e => resolve(e.blockedURI));
        const img = document.createElement("img");
        img.src = "http://192.0.2.1/x.png";
        document.body.appendChild(img);
    })""")
    assert blocked == "http://192.0.2.1/x.png"


ADDRESS = re.compile(r"^browse \S+: (http://[0-9.]+:\d+/) \(Ctrl-C to stop\)$")


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xcv_batch", "browse", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("host", [None, "0.0.0.0"])
def test_the_command_prints_its_address_serves_and_stops_on_ctrl_c(browse_run, page, host):
    before = tree(browse_run)
    process = start(browse_run, "--port", "0", *(["--host", host] if host else []))
    try:
        line = process.stdout.readline().strip()
        found = ADDRESS.match(line)
        assert found and found.group(1).startswith(f"http://{host or '127.0.0.1'}:"), line
        port = urllib.parse.urlsplit(found.group(1)).port
        page.goto(f"http://127.0.0.1:{port}/")
        assert listed_ids(page) == IDS
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0 and out.strip() == "stopped"
    warning = (f"warning: serving on {host}, not this machine only: whoever can reach http://{host}:{port}/ can "
               "read the run")
    assert err.splitlines() == ([warning] if host else [])
    assert tree(browse_run) == before


def test_a_run_still_writing_shows_its_committed_rows_only(browse_run, page, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(browse_run, out)
    metrics = os.path.join(out, "metrics")
    last = sorted(os.listdir(metrics))[-1]  # images 4 and 5: not committed yet
    shutil.move(os.path.join(metrics, last), tmp_path / last)
    with open(os.path.join(metrics, f".{last}.0123abcd.tmp"), "wb") as f:  # a shard in flight, half written
        f.write(b"PAR1 half a file")
    with serving(out, refresh_seconds=0) as server:
        page.goto(server.url)
        assert listed_ids(page) == IDS[:4]
        assert page.goto(server.url + "image/4").status == 404
        shutil.move(tmp_path / last, os.path.join(metrics, last))  # the shard commits
        page.goto(server.url)
        assert listed_ids(page) == IDS
        assert page.goto(server.url + "image/5").status == 200
