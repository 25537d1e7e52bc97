"""The driver: lists the images, lays out OUT, plans shards, runs them in-process or on Ray actors, and reports.

The only package of xcv_batch that imports Ray (lazily: an in-process run never loads it).

* :mod:`.run` — :func:`run_job`, :func:`plan_shards`, :class:`RunReport`, and the choice of executor (light
  imports only: the job, source and OUT are checked before torch, zarr or Ray load);
* :mod:`.dry_run` — ``run --dry-run``: the plan, the passes per image and a time estimate, nothing written;
* :mod:`.local` — every shard in this process, one after another;
* :mod:`.placement` — how many workers, with what resources (pure; no Ray);
* :mod:`.session` — joining or starting Ray for one run (a local one on loopback only);
* :mod:`.orphans` — the folders of local Rays, and stopping what a killed driver left running;
* :mod:`.actors` — Ray actors holding a ShardWorker, and the scheduler that survives their deaths;
* :mod:`.jobs` — ``submit`` / ``status`` / ``logs`` / ``stop`` through the Ray Jobs API;
* :mod:`.upload` — what ``submit`` sends: the job file, ``--include``d paths and the package, nothing hidden;
* :mod:`.faults` — test-only fault injection (kill or hang a worker on a chosen image).
"""

from .local import InProcessExecutor
from .run import Executor, RunReport, choose_executor, plan_shards, run_job

__all__ = [
    "Executor",
    "InProcessExecutor",
    "RunReport",
    "choose_executor",
    "plan_shards",
    "run_job",
]
