"""scripts/plot_loss.py and scripts/vae_objects.py: the training diagnostics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import load_script


@pytest.fixture(scope="module")
def plot():
    return load_script("plot_loss")


def test_plot_loss_reads_resumed_runs_and_draws_one_panel_per_run(plot, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 41)]
    lines += [json.dumps({"step": 40, "loss": 0.5}), json.dumps({"step": 41, "loss": float("nan")}), '{"step": 42, "lo']
    (run / "metrics.jsonl").write_text("\n".join(lines))
    steps, values = plot.read_losses(run)
    assert steps.tolist() == list(range(1, 41))  # resumed step 40 logged twice: the last one wins; NaN and a cut line skipped
    assert values[-1] == 0.5 and np.isclose(values[0], 1.0)
    out = plot.main([str(run), str(run), "-o", str(tmp_path / "curves.png")])
    img = Image.open(out)
    assert img.size == (plot.W, 2 * plot.H)
    assert len(np.unique(np.asarray(img).reshape(-1, 3), axis=0)) > 3  # axes, labels and curves, not a blank sheet
    with pytest.raises(SystemExit, match="does not exist"):
        plot.main([str(tmp_path / "missing"), "-o", str(tmp_path / "x.png")])


def test_vae_objects_scores_a_vae_per_frame(tiny_model_dir, tmp_path):
    script = load_script("vae_objects")
    [result] = script.main([str(tiny_model_dir), "--clips", "2", "--size", "32", "--frames", "5",
                            "--json", str(tmp_path / "r.json")])
    per_frame = result["object_l1_per_frame"]
    assert len(per_frame) == 5 and all(0 <= v <= 2 for v in per_frame if v == v)
    assert json.loads((tmp_path / "r.json").read_text())[0]["psnr_db"] == pytest.approx(result["psnr_db"])
    with pytest.raises(SystemExit):
        script.main([str(tiny_model_dir), "--frames", "6"])
