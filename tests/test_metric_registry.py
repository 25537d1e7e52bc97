"""One registration per metric: a metric registered from this file alone validates in a job, is evaluated by a real
run into its own Parquet column (and cost column), and is ranked by ``summarize``; unregistered, it is gone again."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import zarr

from ray_helpers import rows_of
from xcv_batch.config import job_from_mapping
from xcv_batch.driver import run_job
from xcv_batch.errors import ConfigError
from xcv_batch.metrics.base import Evaluation, MapBatch, Metric
from xcv_batch.metrics.registry import MetricInfo, MetricSpec, metric_info, metric_specs, registered
from xcv_batch.report.summarize import summarize


@dataclass(frozen=True)
class ScaledMapNormSettings:
    scale: float = 1.0

    def check(self) -> None:
        if self.scale <= 0:
            raise ConfigError("scale", f"must be > 0, got {self.scale}")


class ScaledMapNorm(Metric):
    """``scale`` × the L1 norm of each map: a map that says less scores lower."""

    def evaluate(self, batch: MapBatch) -> Evaluation:
        return Evaluation({"scaled_map_l1": self.settings.scale * batch.attributions.double().abs().flatten(1).sum(1)})


SPEC = MetricSpec(
    name="scaled_map_norm", settings=ScaledMapNormSettings, implementation=f"{__name__}:ScaledMapNorm",
    columns=(MetricInfo("scaled_map_l1", "lower", "Map L1 norm", family="toy"),),
)

METHODS = ("occlusion", "integrated_gradients")


def job(tmp_path, **metrics):
    return job_from_mapping({
        "name": "metric-registry", "seed": 3,
        "data": {"source": "builtin:skimage", "limit": 2},
        "model": {"arch": "resnet18", "weights": "none", "resolution": 32},
        "methods": {"occlusion": {"window": 8, "stride": 8}, "integrated_gradients": {"n_steps": 4}},
        "sensitivity": None,
        "metrics": metrics,
        "compute": {"workers": 1, "device": "cpu", "batch_size": 2, "forward_batch": 16},
        "output": {"path": str(tmp_path / "out")},
    })


def test_a_metric_registered_from_a_test_file_validates_runs_and_is_ranked(tmp_path):
    with registered(SPEC):
        assert metric_specs()[-1] is SPEC and metric_info("scaled_map_l1").family == "toy"
        with pytest.raises(ConfigError, match=r"^metrics\.scaled_map_norm\.scale: must be > 0, got -1"):
            job(tmp_path, scaled_map_norm={"scale": -1})
        run = job(tmp_path, scaled_map_norm={"scale": 2.0})
        assert run.metrics.scaled_map_norm == ScaledMapNormSettings(scale=2.0)
        run_job(run)

        rows = rows_of(run.output.path)
        # 2 images × (the methods + the 3 control maps of controls: true, the default): the new metric scores them all
        assert len(rows) == 2 * (len(METHODS) + 3) and (rows.status == "ok").all()
        maps = zarr.open_group(f"{run.output.path}/attributions.zarr", mode="r")
        for row in rows.itertuples():
            expected = 2.0 * np.abs(maps[row.method][row.index].astype(np.float64)).sum()
            assert row.scaled_map_l1 == pytest.approx(expected, rel=1e-5)
            assert row.scaled_map_norm_seconds > 0

        summary = summarize(run.output.path, n_boot=50)
        assert "scaled_map_l1" in summary.metrics
        by_image = rows.pivot(index="image_id", columns="method", values="scaled_map_l1")
        for method in METHODS:
            # lower is better: rank 1 on an image where this method's map has the smaller norm
            expected_rank = float(np.mean([1.0 if by_image.loc[i, method] == by_image.loc[i].min() else 2.0
                                           for i in by_image.index]))
            assert summary.methods[method].ranks["scaled_map_l1"].mean_rank == expected_rank

    # Gone again: the key is unknown, the column no metric.
    with pytest.raises(ConfigError, match=r"^metrics\.scaled_map_norm: unknown key"):
        job(tmp_path, scaled_map_norm={})
    with pytest.raises(KeyError):
        metric_info("scaled_map_l1")
