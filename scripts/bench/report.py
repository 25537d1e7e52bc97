"""The benchmark's results: speed-ups from the measurements, then bench.json, bench.md and a terminal table."""

from __future__ import annotations

import json
import os

from engine import N_PERTURB


def speedups(engine_results: dict, seed_results: dict) -> dict:
    """Seed seconds ÷ engine seconds per image, per method, its sensitivity and the whole suite.

    ``speedup`` puts both on the same machine speed: the seed's seconds are scaled by (raw throughput during the
    seed's run) ÷ (raw throughput during the engine's run of the same method), both measured by paired raw passes of
    the same kind and batch. ``wall_speedup`` is the plain ratio, at whatever load each phase happened to get.
    """
    out: dict = {}
    seed_total = seed_wall_total = engine_total = 0.0
    complete = True

    def entry(seed_part: dict, engine_part: dict) -> tuple[float, float, float]:
        load = seed_part["raw_rate"] / engine_part["raw_rate"]
        return seed_part["seconds_per_image"] * load, seed_part["seconds_per_image"], engine_part["seconds_per_image"]

    for name, seed_entry in seed_results.items():
        engine_entry = engine_results[name]
        row = {}
        parts = [("method", seed_entry, engine_entry["method"])]
        if "sensitivity" in seed_entry:
            parts.append(("sensitivity", seed_entry["sensitivity"], engine_entry["sensitivity"]))
        else:
            complete = False
        for label, seed_part, engine_part in parts:
            seed_s, seed_wall, engine_s = entry(seed_part, engine_part)
            row[label] = {"speedup": seed_s / engine_s, "wall_speedup": seed_wall / engine_s,
                          "seed_seconds_at_engine_speed": seed_s}
            seed_total += seed_s
            seed_wall_total += seed_wall
            engine_total += engine_s
        out[name] = row
    out["suite_with_sensitivity" if complete else "suite"] = {
        "seed_seconds_per_image": seed_total, "seed_wall_seconds_per_image": seed_wall_total,
        "engine_seconds_per_image": engine_total,
        "speedup": seed_total / engine_total, "wall_speedup": seed_wall_total / engine_total,
    }
    return out


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["method", "engine s/img", "efficiency", "sens. s/img", "sens. efficiency", "seed s/img",
              "seed efficiency", "seed sens. s/img", "speed-up", "sens. speed-up"]
    rows = []
    engine, seed, speed = report["engine"], report.get("seed", {}), report.get("speedup", {})
    for name, entry in engine.items():
        method, sens = entry["method"], entry.get("sensitivity")
        seed_entry = seed.get(name, {})
        speed_entry = speed.get(name, {})
        rows.append([
            name,
            _fmt(method["seconds_per_image"], ".3f"),
            _fmt(method["efficiency"]),
            _fmt(sens["seconds_per_image"] if sens else None),
            _fmt(sens["efficiency"] if sens else None),
            _fmt(seed_entry.get("seconds_per_image"), ".3f"),
            _fmt(seed_entry.get("efficiency")),
            _fmt(seed_entry.get("sensitivity", {}).get("seconds_per_image")),
            _fmt(speed_entry.get("method", {}).get("speedup"), ".1f", "×"),
            _fmt(speed_entry.get("sensitivity", {}).get("speedup"), ".1f", "×"),
        ])
    suite = speed.get("suite_with_sensitivity") or speed.get("suite")
    if suite:
        label = "suite + sensitivity" if "suite_with_sensitivity" in speed else "suite"
        rows.append([label, _fmt(suite["engine_seconds_per_image"]), "", "", "",
                     _fmt(suite["seed_seconds_per_image"]), "", "", _fmt(suite["speedup"], ".1f", "×"), ""])
    return header, rows


def markdown(report: dict) -> str:
    header, rows = table_rows(report)
    lines = [f"Machine: {report['machine']}; {report['date']}; `{report['command']}`", "",
             f"{report['arch']} ({report['weights']} weights), {report['resolution']} px, {report['precision']}, "
             f"torch {report['torch']} with {report['torch_threads']} thread(s), execution {report['execution']}, "
             f"{report['images']} images (sensitivity on {report['sens_images']}, seed-style loop on "
             f"{report['seed_images']}, its sensitivity on {report['seed_sens_images']}), forward batch "
             f"{report['forward_batches']}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    gain = report.get("execution_gain")
    if gain:
        lines += ["", "Fast execution (BatchNorm folded into the convolutions, channels_last) over the stock model, "
                  "raw throughput at the forward batch: " + ", ".join(f"{k} ×{v['gain']:.2f}" for k, v in gain.items())
                  + ". Efficiency is against the fast execution of the stock model; speed-ups are against the "
                  "seed-style loop on the stock model, as the seed ran it."]
    speed = report.get("speedup", {})
    walls = [f"{name} {parts['method']['wall_speedup']:.1f}×"
             + (f" / {parts['sensitivity']['wall_speedup']:.1f}×" if "sensitivity" in parts else "")
             for name, parts in speed.items() if not name.startswith("suite")]
    suite = speed.get("suite_with_sensitivity") or speed.get("suite")
    if walls:
        lines += ["", "Speed-ups put the seed-style loop on the engine's machine speed (paired raw throughput); "
                  "unscaled wall-clock ratios (method / sensitivity): " + ", ".join(walls)
                  + (f", suite {suite['wall_speedup']:.1f}×" if suite else "") + "."]
    seed = report.get("seed", {})
    scaled = [f"{name} k={entry['sensitivity']['copies']}" for name, entry in seed.items()
              if "sensitivity" in entry and entry["sensitivity"]["copies"] != N_PERTURB]
    if scaled:
        lines += ["", f"The seed-style sensitivity ran with k copies, its stacked call scaled by {N_PERTURB} / k: "
                  + ", ".join(scaled) + "."]
    memory = report.get("memory", {})
    if memory:
        lines += ["", "Peak memory: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in memory.items())]
    if report.get("parity"):
        lines += ["", f"{report['precision']} against fp32 (median over images): " + ", ".join(
            f"{name} cosine {p['cosine_median']:.4f}, rel. L2 {p['relative_l2_median']:.3f}"
            for name, p in report["parity"].items())]
    seg = report.get("segmentation")
    if seg:
        lines += ["", f"Segmentation at {seg['resolution']} px: quickshift {seg['quickshift_s_per_image']:.3f} "
                  f"s/image, SLIC {seg['slic_s_per_image']:.3f} s/image; the device's LIME forwards "
                  f"{seg['device_lime_s_per_image']:.3f} s/image → {seg['workers_needed']} quickshift worker(s) "
                  f"needed, {seg['workers']} available, keeps up: {seg['keeps_up']}"]
    lines += ["", f"Wall time of the benchmark: {report['wall_seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def print_table(report: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(markdown(report))
        return
    header, rows = table_rows(report)
    table = Table(title=f"{report['machine']} — {report['resolution']} px, {report['precision']}")
    for column in header:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def write_report(report: dict, out: str) -> None:
    """``out``/bench.json and bench.md, and the table on the terminal."""
    with open(os.path.join(out, "bench.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    with open(os.path.join(out, "bench.md"), "w", encoding="utf-8") as fh:
        fh.write(markdown(report))
    print_table(report)
