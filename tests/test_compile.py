"""Pipeline.compile / `--compile`: the DiT, the student and the VAE decode through torch.compile (issue 9, part 3)."""

import pytest
import torch
from torch._dynamo.utils import counters

from kinema.cli import main
from kinema.infer import InputError, Pipeline

REQUEST = dict(frames=5, width=64, height=64, steps=3, seed=3)


@pytest.mark.slow
def test_a_compiled_pipeline_matches_eager_and_runs_the_step_cache_eagerly(tiny_model_dir):
    eager = Pipeline.from_pretrained(tiny_model_dir)
    compiled = Pipeline.from_pretrained(tiny_model_dir, compile=True)
    assert compiled.compiled and not eager.compiled
    assert compiled.compile() is compiled  # compiling twice wraps nothing twice
    torch._dynamo.reset()
    counters.clear()
    want, got = eager.generate("a red ball", **REQUEST), compiled.generate("a red ball", **REQUEST)
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])  # the DiT's forward was compiled
    assert (got.latents - want.latents).abs().max() < 1e-4 * want.latents.abs().max()
    assert abs(got.frames.astype(int) - want.frames.astype(int)).max() <= 1
    assert torch.equal(compiled.generate("a red ball", **REQUEST).latents, got.latents)  # deterministic once compiled

    # the step cache swaps block forwards between calls: its sampling runs eagerly, exactly as without compile
    cached = dict(REQUEST, steps=8, cache_threshold=0.5)
    want = eager.generate("a red ball", **cached)
    stats = eager.cache_stats
    before = counters["stats"]["unique_graphs"]
    got = compiled.generate("a red ball", **cached)
    assert torch.equal(got.latents, want.latents) and compiled.cache_stats == stats and stats.reused > 0
    assert counters["stats"]["unique_graphs"] == before  # nothing new compiled for the DiT


def test_on_a_cpu_the_vae_decode_stays_eager_and_the_dit_compiles(tiny_model_dir):
    """Inductor's convolutions leave oneDNN's direct path: the bundled decode ran x0.40 compiled in fp32 and x0.94
    in bf16 (README, Speed). Compiling is lazy, so this loads and wraps without compiling anything."""
    for dtype in ("fp32", "bf16"):  # bf16: fp32 where the CPU lacks it
        pipe = Pipeline.from_pretrained(tiny_model_dir, dtype=dtype, compile=True)
        assert "decode" not in pipe.vae.__dict__ and pipe.dit._compiled_call_impl is not None


def test_compile_is_refused_with_offloading_or_int8_weights_before_loading(tiny_model_dir, tmp_path, capsys):
    for memory in ("model", "block"):
        with pytest.raises(InputError, match=f"compile does not combine with offload '{memory}'"):
            Pipeline.from_pretrained(tiny_model_dir, memory=memory, compile=True)
    out = tmp_path / "ball.mp4"
    for flags in (["--offload", "model"], ["--quantize", "int8"]):
        assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--compile", *flags, "-o", str(out)]) == 2
        assert f"--compile runs the model in one process where it was loaded; drop it, or drop {' '.join(flags)}\n" \
               in capsys.readouterr().err  # only the flag given
    assert not out.exists()
