"""scripts/bundle_model.py: the bundled model is stored in fp16, stays within budget, and still generates."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bundle_model.py"


@pytest.fixture(scope="module")
def bundler():
    spec = importlib.util.spec_from_file_location("bundle_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundle_casts_to_fp16_and_generates_like_the_original(bundler, tiny_model_dir, tmp_path, one_thread):
    from kinema.infer import Pipeline

    out = tmp_path / "assets" / "world-small"
    out.mkdir(parents=True)
    (out / "stale.safetensors").write_bytes(b"old")  # a previous bundle is replaced whole
    assert bundler.main([str(tiny_model_dir), "--out", str(out)]) == 0
    assert torch.is_grad_enabled()  # the script leaves the process as it found it
    assert sorted(p.name for p in out.iterdir()) == ["kinema.json", "transformer.safetensors", "vae.safetensors"]
    for name in ("transformer.safetensors", "vae.safetensors"):
        tensors = load_file(str(out / name))
        assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
        assert (out / name).stat().st_size < 0.6 * (tiny_model_dir / name).stat().st_size
    settings = dict(steps=2, frames=5, width=32, height=32, seed=3)
    a = Pipeline.from_pretrained(tiny_model_dir).generate("a red ball", **settings).frames.astype(np.int16)
    b = Pipeline.from_pretrained(out).generate("a red ball", **settings).frames.astype(np.int16)
    assert np.abs(a - b).max() <= 3  # fp16 rounding of the weights: a few pixel levels at most


def test_bundle_refuses_an_incomplete_folder_or_an_oversized_one(bundler, tiny_model_dir, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    (partial / "vae.safetensors").unlink()
    with pytest.raises(SystemExit, match=r"needs both transformer.safetensors and vae.safetensors"):
        bundler.bundle(partial, tmp_path / "out")
    with pytest.raises(SystemExit, match=r"over the 0 MB budget"):
        bundler.bundle(tiny_model_dir, tmp_path / "out", budget_mb=0.0)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match=r"not a kinema model folder"):
        bundler.bundle(tmp_path, tmp_path / "out")
