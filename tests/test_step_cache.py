"""Step cache (first-block cache): off is exact, on skips steps within a stated tolerance, branches never mix."""

import pytest
import torch

from kinema.cli import main
from kinema.infer import InputError, Pipeline
from kinema.infer.offload import one_sample_at_a_time
from kinema.infer.step_cache import StepCache

# Tolerance of a cached generation: the error in the sampler's total displacement (latents - noise), relative
# to that displacement. Measured 0.064 at threshold 0.2 on the sensitive tiny model below (8 of 20 row
# evaluations reused); changing the prompt moves it by 0.44, so 0.15 is a bound that means something.
TOLERANCE = 0.15


@pytest.fixture(scope="module")
def pipe(tiny_model_dir, one_thread):
    return Pipeline.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def sensitive_pipe(tmp_path_factory, one_thread):
    """A tiny model with larger random weights (std 0.2), whose block-0 residual moves 10-40% between steps.

    The shared std-0.05 model barely reacts to t or x, so any cache looks harmless there.
    """
    from conftest import save_tiny_model

    return Pipeline.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sensitive", std=0.2))


def count_full_rows(monkeypatch, dit) -> list[int]:
    """Rows passing through the last block's real forward (a skipped block never reaches it), per call."""
    rows = []
    block_type, last = type(dit.blocks[-1]), dit.blocks[-1]
    forward = block_type.forward

    def counted(self, x, *args):
        if self is last:
            rows.append(x.shape[0])
        return forward(self, x, *args)

    monkeypatch.setattr(block_type, "forward", counted)
    return rows


def displacement_error(pipe, video, reference) -> float:
    s = reference.settings
    noise = torch.randn(pipe.latent_shape(s), generator=torch.Generator().manual_seed(s.seed))
    return ((video.latents - reference.latents).norm() / (reference.latents - noise).norm()).item()


def test_threshold_zero_is_bit_identical_and_attaches_nothing(pipe):
    plain = pipe.generate("a red ball", seed=2, sampler="unipc", steps=5)
    off = pipe.generate("a red ball", seed=2, sampler="unipc", steps=5, cache_threshold=0.0)
    assert torch.equal(plain.latents, off.latents) and (plain.frames == off.frames).all()
    assert pipe.cache_stats is None and "step_cache" not in off.notes
    assert not any("forward" in b.__dict__ for b in pipe.dit.blocks)


def test_a_cache_that_never_hits_is_bit_identical(pipe, monkeypatch):
    """The wrapped blocks themselves change nothing: with a threshold no change can beat, every step runs in full."""
    plain = pipe.generate("a red ball", seed=2, steps=4)
    rows = count_full_rows(monkeypatch, pipe.dit)
    cached = pipe.generate("a red ball", seed=2, steps=4, cache_threshold=1e-30)
    assert torch.equal(plain.latents, cached.latents)
    assert pipe.cache_stats.full == 8 and pipe.cache_stats.reused == 0 and rows == [2, 2, 2, 2]
    assert not any("forward" in b.__dict__ for b in pipe.dit.blocks)  # detached after the generation


def test_threshold_skips_steps_within_tolerance(sensitive_pipe, monkeypatch):
    kw = dict(seed=1, steps=10, sampler="euler")
    reference = sensitive_pipe.generate("a red ball", **kw)
    rows = count_full_rows(monkeypatch, sensitive_pipe.dit)
    cached = sensitive_pipe.generate("a red ball", cache_threshold=0.2, **kw)
    stats = sensitive_pipe.cache_stats
    assert stats.full + stats.reused == 20  # 10 steps x (cond, uncond)
    assert sum(rows) == stats.full and 4 <= stats.reused <= 16
    assert 1 in rows  # some steps ran the later blocks for one branch only: decisions are per row
    err = displacement_error(sensitive_pipe, cached, reference)
    assert 0 < err < TOLERANCE
    reuse_all = sensitive_pipe.generate("a red ball", cache_threshold=1e9, **kw)
    assert sensitive_pipe.cache_stats.full == 2  # only the first evaluation of each row
    assert displacement_error(sensitive_pipe, reuse_all, reference) > err  # the threshold is what keeps it close


def test_each_generation_starts_with_an_empty_cache(sensitive_pipe):
    a = sensitive_pipe.generate("a red ball", seed=1, steps=6, cache_threshold=0.2)
    sensitive_pipe.generate("a blue star spins", seed=5, steps=6, cache_threshold=0.2)
    b = sensitive_pipe.generate("a red ball", seed=1, steps=6, cache_threshold=0.2)
    assert torch.equal(a.latents, b.latents)


def _dit_inputs(dit, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = dit.cfg.in_channels
    return (torch.randn(2, c, 3, 4, 4, generator=g), torch.full((2,), 500.0),
            torch.randn(2, 7, dit.cfg.text_dim, generator=g))


@pytest.mark.parametrize("row_by_row", [False, True])
@torch.inference_mode()
def test_cond_and_uncond_rows_keep_their_own_cache(sensitive_pipe, monkeypatch, row_by_row):
    dit = sensitive_pipe.dit
    x, t, text = _dit_inputs(dit)
    if row_by_row:  # the block offload mode runs CFG's rows one after the other
        monkeypatch.setattr(dit, "forward", one_sample_at_a_time(dit.forward))
    with StepCache(dit, threshold=0.05) as cache:
        first = dit(x, t, text)
        assert not torch.allclose(first[0], first[1], atol=1e-3)  # the rows differ, so mixing them would show
        again = dit(x, t, text)  # nothing changed: both rows reuse, each its own residual
        assert (cache.stats.full, cache.stats.reused) == (2, 2)
        torch.testing.assert_close(again, first, rtol=1e-5, atol=1e-5)
        moved = x.clone()
        moved[1] = torch.randn_like(moved[1]) * 3  # the unconditional row jumps, the conditional one stays
        out = dit(moved, t, text)
        assert (cache.stats.full, cache.stats.reused) == (3, 3)
    torch.testing.assert_close(out[0], first[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1:], dit(moved[1:], t[1:], text[1:]), rtol=1e-5, atol=1e-5)


def test_row_by_row_forward_matches_batched(sensitive_pipe, monkeypatch):
    kw = dict(seed=3, steps=6, cache_threshold=0.2)
    batched = sensitive_pipe.generate("a red ball", **kw)
    stats = sensitive_pipe.cache_stats
    monkeypatch.setattr(sensitive_pipe.dit, "forward", one_sample_at_a_time(sensitive_pipe.dit.forward))
    rows = sensitive_pipe.generate("a red ball", **kw)
    assert sensitive_pipe.cache_stats == stats
    torch.testing.assert_close(rows.latents, batched.latents, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_threshold_is_refused(pipe, bad):
    with pytest.raises(InputError, match=r"cache threshold must be a finite number >= 0.*got " + repr(bad)[:4]):
        pipe.generate("a ball", cache_threshold=bad)


def test_cache_needs_two_blocks(pipe):
    from kinema.dit import DiT
    one = DiT(pipe.cfg.dit.replace(num_layers=1))
    with pytest.raises(ValueError, match="needs a DiT with >= 2 blocks, this one has 1"):
        StepCache(one, 0.1)


def test_cli_threshold_in_metadata_and_refused_when_negative(tiny_model_dir, tmp_path, capsys):
    import json

    from kinema.common.video import read_video_metadata
    out = tmp_path / "ball.mp4"
    assert main(["generate", "a red ball", "--model", str(tiny_model_dir), "--cache-threshold", "0.3",
                 "-o", str(out), "-q"]) == 0
    meta = read_video_metadata(out)
    assert json.loads(meta["settings"])["cache_threshold"] == 0.3
    assert meta["step_cache"].startswith("reused ")
    assert main(["generate", "a ball", "--model", str(tiny_model_dir), "--cache-threshold", "-1",
                 "-o", str(tmp_path / "bad.mp4")]) == 2
    assert "cache threshold must be a finite number >= 0" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["ball.mp4"]
