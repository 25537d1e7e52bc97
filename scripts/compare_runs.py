"""Two output directories hold the same results: equal Parquet values (all columns but the ``*_seconds`` costs) and
equal Zarr arrays, bit for bit. Used to show that a refactor keeps behaviour:

    python -m xcv_batch run jobs/smoke.yaml --out /tmp/before      # on the old code
    python -m xcv_batch run jobs/smoke.yaml --out /tmp/after       # on the new code
    python scripts/compare_runs.py /tmp/before /tmp/after         # prints EQUAL, or the columns and arrays that differ

``--new-column NAME`` (repeatable) accepts a column that only the second run has (a column the new code adds): it
is listed with its values' counts, and the other columns are compared.
"""

import glob
import os
import sys

import numpy as np
import pandas as pd
import zarr

from xcv_batch.output.layout import METRICS_DIR, ZARR_NAME

args = sys.argv[1:]
new_columns = [args[i + 1] for i, arg in enumerate(args) if arg == "--new-column"]
a, b = [arg for i, arg in enumerate(args) if arg != "--new-column" and (i == 0 or args[i - 1] != "--new-column")]
def rows(out):
    parts = sorted(glob.glob(os.path.join(out, METRICS_DIR, "*.parquet")))
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    return df.sort_values(["image_id", "method"]).reset_index(drop=True)
ra, rb = rows(a), rows(b)
for name in new_columns:
    if name in rb.columns and name not in ra.columns:
        print(f"new column {name}: {rb[name].value_counts(dropna=False).to_dict()}")
        rb = rb.drop(columns=name)
if list(ra.columns) != list(rb.columns):
    sys.exit(f"different columns: {sorted(set(ra.columns) ^ set(rb.columns)) or 'same names, other order'}")
skip = [c for c in ra.columns if c.endswith("_seconds") or c in ("worker", "host", "hostname", "pid", "started_at", "finished_at", "device")]
bad = 0
for c in ra.columns:
    if c in skip: continue
    x, y = ra[c], rb[c]
    if x.dtype.kind == "f":
        ok = np.array_equal(x.to_numpy(), y.to_numpy(), equal_nan=True)
    else:
        ok = x.astype(str).equals(y.astype(str))
    if not ok:
        bad += 1; print("DIFF column", c)
za, zb = zarr.open_group(os.path.join(a, ZARR_NAME), mode="r"), zarr.open_group(os.path.join(b, ZARR_NAME), mode="r")
def arrays(g, prefix=""):
    out = {}
    for k, v in g.arrays(): out[prefix + k] = v
    for k, v in g.groups(): out.update(arrays(v, prefix + k + "/"))
    return out
aa, ab = arrays(za), arrays(zb)
if sorted(aa) != sorted(ab):
    sys.exit(f"different arrays: {sorted(set(aa) ^ set(ab))}")
for k in sorted(aa):
    if not np.array_equal(aa[k][...], ab[k][...], equal_nan=True):
        bad += 1; print("DIFF array", k)
print(f"{len(ra)} rows x {len(ra.columns)} columns ({len(skip)} timing/host skipped), {len(aa)} arrays: {'EQUAL' if not bad else str(bad)+' differ'}")
sys.exit(1 if bad else 0)
