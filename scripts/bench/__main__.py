"""Benchmark: how close the engine runs to the model's raw throughput, and how much faster it is than the seed.

    python scripts/bench --out results/bench                           # this CPU: 64 px, 8 images
    python scripts/bench --res 224 --device cuda --forward-batch auto --out results/gpu   # (scripts/bench_gpu.sh)
    python scripts/bench --worker-memory --out results/bench           # a CPU worker's peak memory at 224 px

What is timed is the one engine, :meth:`xcv_batch.execution.explain.BatchExplainer.explain_batch`, as a run calls
it: one explainer per method with every metric off (the method's time), one with Max-Sensitivity on (its time is
the difference on the same image).

*Efficiency*: the forward(+backward)-equivalents a method pushes through the model per second inside the engine,
divided by the raw throughput of the same model (stock torchvision with the same weights, executed as the engine
executes it: BatchNorm folded and channels_last under the default ``--execution fast``), input size, batch and
precision, in the same process: forward only for Occlusion and LIME, forward+backward to the input for the gradient
methods. A method's rows per image are its registered ``passes`` (xcv_batch.methods.registry); the forward that
picks each image's target and probability is engine work too and counts as one forward (a third of a
forward+backward row, by the registry's cost model), except for a method whose own first pass picks it (a spec
with ``classifies``: Guided Grad-CAM). The speed-up of that execution over the stock model is
measured too (``execution_gain``).
On a machine shared with others the load changes by the second, so raw passes are *paired into* every measurement:
after a forward of the measured network, whenever raw passes have had less than ``--raw-share`` of the time, one
raw pass runs and is timed on its own. Engine and yardstick see the same machine at the same moments. Each method
is timed in ``--pieces`` pieces; reported is the median efficiency over pieces.

*Speed-up*: the seconds per image of a seed-style loop (per-image Captum with its library defaults, the ``lime``
package with its defaults, ``captum.metrics.sensitivity_max`` per image) divided by the engine's, on the same images
and settings, with the loop's seconds scaled to the machine speed measured during the engine's run (the ratio of the
two paired raw throughputs; the unscaled ratio is ``wall_speedup`` in the JSON). Captum's ``sensitivity_max`` makes
one explanation call on the clean image (timed on its own: it is also the loop's method time for that image) and one
on the n perturbed copies stacked into one batch. For IG and IG-SG that batch is n × steps (× samples) rows, 11.5 GB
at 64 px for IG-SG: it runs as is when it fits ``--seed-memory-share`` of the free memory, else with fewer copies k
and the stacked call scaled by n / k (a lower bound: bigger batches cost more per row). The lime package explains
one image at a time, so its k = ``--seed-lime-copies`` copies scale exactly. Occlusion and Guided Grad-CAM run at n.
The loop's plain method calls run on ``--seed-images`` images.

The folder runs as a program (``python scripts/bench``): Python puts it first on ``sys.path``, so its modules import
each other by their plain names — raw (the yardstick), engine, seed_loop, segmentation, memory, report, cli.
"""

import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")  # the lime package's per-sample progress bar

from cli import main  # noqa: E402 - after the environment the lime package reads at import

if __name__ == "__main__":
    sys.exit(main())
