"""torchrun with 2 CPU processes (gloo) follows the 1-process loss curve, with DDP and with FSDP2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from kinema.train import train

from test_train import BUCKETS, losses, make_cache, recipe

# One torchrun launch trains every config given, one after another (process start-up dominates on CPU);
# the worker owns the process group, so train() leaves it up between runs.
WORKER = """
import sys
import torch.distributed as dist
from kinema.train import train
dist.init_process_group("gloo")
for path in sys.argv[1:]:
    train(path)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process_with_the_same_global_batch(tmp_path):
    cache = make_cache(tmp_path / "cache", n=24)
    reference = train(recipe(tmp_path / "one", cache, max_steps=5,
                             data=dict(buckets=[dict(b, batch_size=2 * b["batch_size"]) for b in BUCKETS])))
    configs = []
    for mode in ("ddp", "fsdp"):  # per-rank batch halved: the same global batch over 2 ranks
        path = tmp_path / f"{mode}.json"
        path.write_text(json.dumps(recipe(tmp_path / mode, cache, max_steps=5, parallel=dict(mode=mode))))
        configs.append(str(path))
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(tmp_path / "worker.py"), *configs], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 rank(s), ddp" in run.stdout and "2 rank(s), fsdp" in run.stdout
    assert "returned a view tensor" not in run.stderr  # FSDP2's per-step warning (see parallelize) stays quiet

    expected = losses(reference)
    one = load_file(tmp_path / "one" / "model" / "transformer.safetensors")
    for mode in ("ddp", "fsdp"):
        got = [json.loads(line)["loss"] for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        assert len(got) == len(expected) == 5
        assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-5, (mode, got, expected)
        exported = load_file(tmp_path / mode / "model" / "transformer.safetensors")  # gathered from shards for fsdp
        assert max((exported[k] - one[k]).abs().max().item() for k in one) < 1e-5

    # the sharded checkpoint loads into one process (DCP reshards) and training goes on
    resumed = train(recipe(tmp_path / "fsdp", cache, max_steps=6), resume=True)
    assert resumed.step == 6 and torch.isfinite(torch.tensor(losses(resumed)[-1]))
