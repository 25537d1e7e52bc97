"""How fast ``browse`` shows a large run in a real browser, how much memory its server holds, and what it reads.

Makes an OUT of N images from a real small one (tests/scale_helpers.py: rows replicated under new ids, maps
repeated in sharded Zarr objects), serves it from a child process, and drives Debian's headless Chromium
(tests/browser.py) through: the first list page on a cold server, the next pages, then an image page, and the
maps-disagree page when OUT holds the values summarize stores (``--map-agreement`` writes them first, timed). A page
counts as shown once its ``load`` event has fired and every thumbnail on it has loaded. The next pages are timed twice:
by the driver (Playwright's click with its actionability checks, then its round trips until every picture is seen
loaded) and by the browser's own clocks (the click event to the end of the new page's load event: what a person
waits for). The child logs every map and input it reads (the Zarr reader's ``read`` and ``read_many``) and
reports its peak resident memory (``ru_maxrss``) when stopped with Ctrl-C; the script checks that every read
belongs to an image on a page that was shown.

Baselines measured in the same run, in this process: reading the rows (``open_results(OUT).rows()``, what the
server's first page must do at least) and reading the raw maps and inputs of one page
(``Results.attribution``/``model_input``, no drawing, no HTTP).

    python scripts/bench_browse.py --images 10000                         # source: jobs/smoke.yaml run here
    python scripts/bench_browse.py --images 10000 --map-agreement         # and summarize's stored values
    python scripts/bench_browse.py --images 10000 --source results/smoke --work /tmp/bench-browse
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

#: The server, with the Zarr reader's reads logged and its peak memory printed once stopped.
CHILD = """
import json, resource, sys
from xcv_batch.output import zarr_maps
from xcv_batch.browse.server import make_server
reads = []
one, many = zarr_maps.ZarrReader.read, zarr_maps.ZarrReader.read_many
def read(self, name, index):
    reads.append([name, int(index)])
    return one(self, name, index)
def read_many(self, name, indices):
    reads.extend([name, int(i)] for i in indices)
    return many(self, name, indices)
zarr_maps.ZarrReader.read, zarr_maps.ZarrReader.read_many = read, read_many
server = make_server(sys.argv[1], "127.0.0.1", 0)
print(server.url, flush=True)
server.serve_until_interrupted()
print(json.dumps({"reads": reads, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SHOWN = """() => new Promise(resolve => {
  const images = Array.from(document.querySelectorAll("img"));
  const check = () => {
    const pending = images.filter(i => !(i.complete && i.naturalWidth > 0) && !i.dataset.failed);
    if (!pending.length) return resolve(images.length);
    pending[0].scrollIntoView();
    setTimeout(check, 5);
  };
  images.forEach(i => i.addEventListener("error", () => { i.dataset.failed = "1"; }));
  check();
})"""


#: Armed on a page before its next link is clicked: the click's time, kept across the navigation.
ARM_CLICK = """() => document.querySelector("a[rel=next]").addEventListener("click",
  () => sessionStorage.setItem("clicked", String(performance.timeOrigin + performance.now())), {capture: true})"""
#: On the page the click led to: milliseconds from the click to the end of its load event (every inline picture
#: decoded), as the browser's own clocks say, without the driver's round trips.
CLICK_TO_LOAD = """() => { const n = performance.getEntriesByType("navigation")[0];
  return performance.timeOrigin + n.loadEventEnd - Number(sessionStorage.getItem("clicked")); }"""


def shown(page, action) -> tuple[float, int]:
    """(seconds until the page's load event and all its pictures, pictures on it) of ``action()``, as the driver
    (Playwright) sees it: its own actions' round trips included."""
    start = time.perf_counter()
    action()
    page.wait_for_load_state("load")
    count = page.evaluate(SHOWN)
    return time.perf_counter() - start, count


def fetch(url: str) -> tuple[float, str]:
    import urllib.request

    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        body = response.read()
    return time.perf_counter() - start, body.decode("utf-8", "replace")


def indices_on(page) -> set[int]:
    return {int(i) for i in page.eval_on_selector_all("tr.image", "rows => rows.map(r => r.dataset.index)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--source", help="a real small OUT (default: jobs/smoke.yaml run into the work folder)")
    parser.add_argument("--work", default=None, help="folder for the OUTs (default: a temporary one)")
    parser.add_argument("--pages", type=int, default=3, help="list pages to turn after the first")
    parser.add_argument("--per", type=int, default=20, help="images a list page (browse's default: 20)")
    parser.add_argument("--map-agreement", action="store_true",
                        help="first write OUT/map_agreement.parquet as summarize does (timed); the maps-disagree page "
                             "is timed whenever the file is there")
    args = parser.parse_args()

    from browser import chromium_browser
    from scale_helpers import make_large_out
    from xcv_batch.output.results import open_results

    work = args.work or tempfile.mkdtemp(prefix="bench-browse-")
    source = args.source
    if source is None:
        source = os.path.join(work, "smoke")
        if not os.path.exists(source):
            subprocess.run([sys.executable, "-m", "xcv_batch", "run", "jobs/smoke.yaml", "--out", source,
                            "--set", "controls=false"], cwd=ROOT, check=True)  # the five methods, no control maps
    out = os.path.join(work, f"out-{args.images}")
    if not os.path.exists(out):
        make_large_out(source, out, args.images, parts=max(1, args.images // 2500), images_per_object=1000)
    results = open_results(out)
    print(f"source {source}; {args.images} images × {len(results.methods)} methods; {os.cpu_count()} CPUs seen")

    start = time.perf_counter()
    rows = results.rows()
    rows_s = time.perf_counter() - start
    page_ids = rows.drop_duplicates("index").sort_values("index")["image_id"].head(args.per)
    start = time.perf_counter()
    for image_id in page_ids:
        results.model_input(image_id)
        for method in results.methods:
            results.attribution(image_id, method)
    raw_page_s = time.perf_counter() - start
    print(f"baseline: rows read {rows_s:.3f} s; one page's raw maps and inputs read ({args.per} images) {raw_page_s:.3f} s")

    agreement_file = os.path.join(out, "map_agreement.parquet")
    if args.map_agreement:
        from xcv_batch.report import map_agreement

        start = time.perf_counter()
        map_agreement.write(out)
        print(f"summarize's map agreement (every map read once, {args.images} images): "
              f"{time.perf_counter() - start:.1f} s")

    env = dict(os.environ, PYTHONPATH=ROOT)
    server = subprocess.Popen([sys.executable, "-c", CHILD, out], stdout=subprocess.PIPE, text=True, env=env)
    url = server.stdout.readline().strip()
    visited: set[int] = set()
    timings = []
    with chromium_browser() as browser:
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        seconds, count = shown(page, lambda: page.goto(f"{url}?per={args.per}"))
        timings.append(("first list page (cold server)", seconds, count))
        visited |= indices_on(page)
        for number in range(2, args.pages + 2):
            page.evaluate(ARM_CLICK)
            seconds, count = shown(page, lambda: page.locator("a[rel=next]").first.click())
            page.wait_for_url(re.compile(f"page={number}"))
            page.wait_for_load_state("load")
            timings.append((f"list page {number} (driver: click → all shown)", seconds, count))
            timings.append((f"list page {number} (browser: click → load end)", page.evaluate(CLICK_TO_LOAD) / 1000,
                            count))
            visited |= indices_on(page)
        seconds, count = shown(page, lambda: page.locator("a.image-link").first.click())
        timings.append(("image page", seconds, count))
        seconds, count = shown(page, lambda: page.goto(f"{url}?sort=sensitivity_max&method=lime&desc=1&per={args.per}"))
        timings.append(("list sorted by a metric (first time)", seconds, count))
        visited |= indices_on(page)
        if os.path.exists(agreement_file):  # from the stored values: without them every map would be read
            seconds, count = shown(page, lambda: page.goto(f"{url}disagree/maps?per={args.per}"))
            timings.append(("maps disagree (stored values)", seconds, count))
            visited |= indices_on(page)
    # The server alone (no browser): a fresh list page's HTML with its pictures inline, against the smallest answer
    # it gives (a colour bar, cached) as the floor of one request on this machine now.
    floor = min(fetch(url + "colourbar/signed.png")[0] for _ in range(5))
    for number in range(args.pages + 2, args.pages + 5):
        seconds, body = fetch(f"{url}?per={args.per}&page={number}")
        visited |= {int(i) for i in re.findall(r'data-index="(\d+)"', body)}
        timings.append((f"list page {number}: its HTML alone (urllib)", seconds, body.count("<img")))
    server.send_signal(signal.SIGINT)
    report = json.loads(server.communicate(timeout=60)[0].strip().splitlines()[-1])

    print(f"floor: one cached picture over HTTP {floor * 1000:.1f} ms")
    for name, seconds, count in timings:
        print(f"{name:<40} {seconds:7.3f} s  ({count} pictures; ×{seconds / raw_page_s:.2f} the raw read of a page)")
    for who in ("driver: click → all shown", "browser: click → load end"):
        turns = sorted(seconds for name, seconds, _ in timings if name.startswith("list page") and who in name)
        print(f"next page, {who}: median {statistics.median(turns):.3f} s, best {turns[0]:.3f} s, worst "
              f"{turns[-1]:.3f} s over {len(turns)} pages")
    outside = [read for read in report["reads"] if read[1] not in visited]
    print(f"server peak RSS {report['peak_mib']:.0f} MiB; {len(report['reads'])} arrays read, for "
          f"{len({r[1] for r in report['reads']})} images; reads outside the pages shown: {len(outside)}")


if __name__ == "__main__":
    main()
