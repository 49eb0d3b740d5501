"""Multi-process inference: 2-process torchrun (gloo, CPU) sequence- and CFG-parallel outputs equal one process's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kinema.config import DiTConfig
from kinema.dit import DiT
from kinema.infer import Pipeline
from kinema.infer.parallel import ParallelError, ParallelPlan, plan_parallel
from kinema.vae import VAE
from kinema.weights import read_config

# Each case: (name, settings overrides). 64x64x9 -> 3x4x4 = 48 tokens (shards cut frames mid-way: per-token
# modulation); 48x48x1 -> 9 tokens (odd: padded and masked); 32x64x5 -> 2x2x4 = 16 (frame-aligned shards).
SAMPLE_CASES = {"base": dict(), "odd": dict(width=48, height=48, frames=1), "aligned": dict(width=64, height=32, frames=5)}
I2V = DiTConfig(num_attention_heads=4, attention_head_dim=8, in_channels=8, out_channels=4, text_dim=16, freq_dim=16,
                ffn_dim=24, num_layers=2, image_dim=12, added_kv_proj_dim=32)

WORKER = r'''
import sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from kinema.infer.parallel import ParallelPlan, init_distributed, init_mesh, parallelize
sys.path.insert(0, sys.argv[3])
from test_parallel_infer import i2v_outputs, quick_pipeline, run_cases

rank, world, device = init_distributed("cpu")
pipe = quick_pipeline(sys.argv[1])
out = {}
for mode, plan in (("sequence", ParallelPlan(sequence=2)), ("cfg", ParallelPlan(cfg=2)),
                   ("sequence-guidance1", ParallelPlan(sequence=2))):
    handle = parallelize(pipe.dit, init_mesh(plan))
    out.update({f"{mode}/{k}": v for k, v in run_cases(pipe, guidance=1.0 if "guidance1" in mode else None).items()})
    handle.remove()
    if mode == "sequence":  # the I2V DiT (image tokens, 4 heads) directly, with padded and per-frame shapes
        out.update({f"i2v/{k}": v for k, v in i2v_outputs(lambda dit: parallelize(dit, init_mesh(plan))).items()})
if rank == 0:
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])
dist.destroy_process_group()
'''


class HashText:
    """A stand-in text encoder (fixed random tokens per prompt): parallelism never looks inside the text."""

    dim, max_length = 384, 8

    def encode(self, prompts):
        tokens = [torch.randn(self.max_length, self.dim, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                  for p in prompts]
        return torch.stack(tokens), torch.ones(len(prompts), self.max_length, dtype=torch.bool)


def quick_pipeline(model_dir) -> Pipeline:
    """The tiny model's pipeline, built without the text encoder or the meta-device loader (seconds per process)."""
    cfg = read_config(model_dir)
    dit = DiT(cfg.dit)
    dit.load_state_dict(load_file(os.path.join(model_dir, "transformer.safetensors")))
    return Pipeline(cfg, dit.eval(), VAE(cfg.vae).eval(), HashText())


def run_cases(pipe: Pipeline, guidance: float | None = None) -> dict[str, torch.Tensor]:
    """Latents of every SAMPLE_CASES request (guided by default)."""
    out = {}
    for name, overrides in SAMPLE_CASES.items():
        s = pipe.settings("a red ball bounces", seed=3, steps=3, sampler="unipc", guidance=guidance, **overrides)
        out[name] = pipe.sample(s)
    return out


def i2v_outputs(parallelize_fn=None) -> dict[str, torch.Tensor]:
    """An I2V-shaped DiT on odd and per-frame inputs, optionally parallelised by ``parallelize_fn(dit)``."""
    torch.manual_seed(0)
    dit = DiT(I2V)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.1)
    if parallelize_fn is not None:
        parallelize_fn(dit)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 8, 3, 6, 10, generator=g)  # 3x3x5 = 45 tokens: padded to 46 over 2 ranks
    per_frame_t = torch.tensor([[0.0, 500.0, 500.0], [0.0, 250.0, 250.0]])
    text, image = torch.randn(2, 7, 16, generator=g), torch.randn(2, 5, 12, generator=g)
    mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 7])
    with torch.no_grad():
        return {"odd": dit(latents, torch.tensor([700.0, 300.0]), text, mask, image),
                "per_frame": dit(latents, per_frame_t, text, None, image)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_outputs(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parallel")
    (tmp / "worker.py").write_text(WORKER)
    out = tmp / "out.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(tmp / "worker.py"), str(tiny_model_dir), str(out), os.path.dirname(__file__)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return load_file(out)


@pytest.fixture(scope="module")
def one_process_outputs(tiny_model_dir):
    pipe = quick_pipeline(tiny_model_dir)
    return {"guided": run_cases(pipe), "guidance1": run_cases(pipe, guidance=1.0), "i2v": i2v_outputs()}


@pytest.mark.slow  # two processes each import torch: ~15 s on 2 cores, nearly all start-up
@pytest.mark.parametrize("mode", ["sequence", "cfg", "sequence-guidance1"])
@pytest.mark.parametrize("case", list(SAMPLE_CASES))
def test_two_ranks_match_one_process(two_process_outputs, one_process_outputs, mode, case):
    expected = one_process_outputs["guidance1" if "guidance1" in mode else "guided"][case]
    got = two_process_outputs[f"{mode}/{case}"]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert expected.abs().max() > 0.1  # a real signal, not two zeros agreeing


@pytest.mark.slow
@pytest.mark.parametrize("case", ["odd", "per_frame"])
def test_sequence_parallel_dit_with_image_tokens_padding_and_per_frame_timesteps(two_process_outputs,
                                                                                 one_process_outputs, case):
    torch.testing.assert_close(two_process_outputs[f"i2v/{case}"], one_process_outputs["i2v"][case],
                               rtol=0, atol=1e-5)


def test_plan_puts_cfg_over_two_and_the_rest_over_the_sequence():
    assert plan_parallel(2, heads=12) == ParallelPlan(sequence=1, cfg=2)
    assert plan_parallel(8, heads=12) == ParallelPlan(sequence=4, cfg=2)
    assert plan_parallel(3, heads=12) == ParallelPlan(sequence=3, cfg=1)
    assert plan_parallel(4, heads=12, guidance=1.0) == ParallelPlan(sequence=4, cfg=1)  # no uncond pass to split
    assert plan_parallel(2, heads=12, cfg_parallel=False) == ParallelPlan(sequence=2, cfg=1)
    assert plan_parallel(1, heads=12).world_size == 1


def test_world_size_that_does_not_divide_the_heads_is_refused_with_the_sizes_that_work():
    with pytest.raises(ParallelError, match=r"40 attention heads do not divide by 3.*world size in \[1, 2, 4, 5, 8"):
        plan_parallel(6, heads=40)  # cfg 2 x sequence 3
    with pytest.raises(ParallelError, match="12 attention heads do not divide by 5"):
        plan_parallel(5, heads=12)
    with pytest.raises(ParallelError, match="cfg 1 or 2"):
        ParallelPlan(sequence=1, cfg=3)


@pytest.mark.slow
def test_cli_gpus_relaunches_under_torchrun_and_writes_the_single_process_video(tiny_model_dir, tmp_path):
    """`kinema generate --gpus 2` (here on CPU ranks): one file, from rank 0, equal to the one-process video."""
    from kinema.common.video import read_video
    args = ["generate", "a red ball", "--model", str(tiny_model_dir), "--steps", "2", "--frames", "5", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, "-m", "kinema.cli", *args, "-o", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)  # PNG folders: lossless
    two = subprocess.run([sys.executable, "-m", "kinema.cli", *args, "--gpus", "2", "-o", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    a, b = read_video(tmp_path / "one")[0].astype(int), read_video(tmp_path / "two")[0].astype(int)
    assert a.shape == b.shape == (5, 64, 64, 3) and np.abs(a - b).max() <= 1
