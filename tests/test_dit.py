"""DiT: parity with diffusers' WanTransformer3DModel, patchify round trip, RoPE, masks, per-frame timesteps."""

import copy
import warnings

import pytest
import torch

from kinema.config import DiTConfig
from kinema.dit import DiT, patch_grid, patchify, unpatchify
from kinema.nn import apply_rope, rope_3d

diffusers = pytest.importorskip("diffusers")

TINY = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16, freq_dim=32,
            ffn_dim=48, num_layers=2)


def _reference(tmp_path, **extra):
    """diffusers' model with random weights, saved and loaded back through kinema's loader."""
    from kinema.weights import load_dit

    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(patch_size=(1, 2, 2), rope_max_seq_len=64, **TINY, **extra).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ref.save_pretrained(tmp_path / "transformer")
    return ref, load_dit(tmp_path / "transformer")


def test_forward_matches_diffusers(tmp_path):
    ref, ours = _reference(tmp_path)
    x, t, text = torch.randn(2, 4, 3, 8, 6), torch.tensor([500.0, 20.0]), torch.randn(2, 7, 16)
    with torch.no_grad():
        want = ref(x, t, text, return_dict=False)[0]
        got = ours(x, t, text)
    assert got.shape == want.shape == x.shape
    assert (got - want).abs().max() <= 1e-4


def test_bf16_forward_is_as_close_to_fp32_as_diffusers_bf16(tmp_path):
    """In bf16 the two implementations round differently; kinema's must stay as close to the fp32 answer as
    diffusers' and keep the same parameters in fp32 (diffusers' ``_keep_in_fp32_modules``, as its
    ``from_pretrained(torch_dtype=torch.bfloat16)`` leaves them)."""
    from kinema.weights import load_dit

    ref, _ = _reference(tmp_path)
    ours = load_dit(tmp_path / "transformer", dtype=torch.bfloat16)
    ref_bf16 = copy.deepcopy(ref).to(torch.bfloat16)
    for name, p in ref_bf16.named_parameters():
        if any(part in ref_bf16._keep_in_fp32_modules for part in name.split(".")):
            p.data = p.data.float()
    fp32 = {n for n, p in ours.named_parameters() if p.dtype == torch.float32}
    assert fp32 == {n for n, p in ref_bf16.named_parameters() if p.dtype == torch.float32} != set()
    x, t, text = torch.randn(2, 4, 3, 8, 6), torch.tensor([500.0, 20.0]), torch.randn(2, 7, 16)
    with torch.no_grad():
        exact = ref(x, t, text, return_dict=False)[0]
        want = ref_bf16(x.bfloat16(), t, text.bfloat16(), return_dict=False)[0].float()
        got = ours(x.bfloat16(), t, text.bfloat16()).float()
    assert got.shape == x.shape
    err_ours, err_ref = (got - exact).norm() / exact.norm(), (want - exact).norm() / exact.norm()
    assert err_ours <= 1.25 * err_ref + 1e-3, (err_ours, err_ref)
    assert (got - want).norm() / want.norm() < 0.03


def test_per_frame_timesteps_match_diffusers_per_token(tmp_path):
    ref, ours = _reference(tmp_path)
    x, text = torch.randn(2, 4, 3, 8, 6), torch.randn(2, 7, 16)
    t_frames = torch.tensor([[0.0, 500.0, 500.0], [20.0, 0.0, 999.0]])
    t_tokens = t_frames.repeat_interleave(4 * 3, dim=1)  # (B, N): 4x3 tokens per frame
    with torch.no_grad():
        want = ref(x, t_tokens, text, return_dict=False)[0]
        got = ours(x, t_frames, text)
    assert (got - want).abs().max() <= 1e-4


def test_image_to_video_variant_matches_diffusers(tmp_path):
    ref, ours = _reference(tmp_path, image_dim=20, added_kv_proj_dim=24)
    x, t = torch.randn(1, 4, 2, 4, 4), torch.tensor([300.0])
    text, image = torch.randn(1, 512, 16), torch.randn(1, 5, 20)
    with torch.no_grad():
        want = ref(x, t, text, encoder_hidden_states_image=image, return_dict=False)[0]
        got = ours(x, t, text, image_tokens=image)
    assert (got - want).abs().max() <= 1e-4


def test_text_mask_ignores_padding():
    torch.manual_seed(0)
    model = DiT(DiTConfig(**TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    x, t = torch.randn(1, 4, 1, 4, 4), torch.tensor([400.0])
    text = torch.randn(1, 5, 16)
    mask = torch.tensor([[True, True, True, False, False]])
    padded = text.clone()
    padded[:, 3:] = torch.randn(1, 2, 16) * 10  # garbage in padding must not matter
    with torch.no_grad():
        a = model(x, t, text, mask)
        b = model(x, t, padded, mask)
        c = model(x, t, text[:, :3])
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(model(x, t, padded), a, atol=1e-3)  # without the mask it does matter


def test_zero_init_output_and_gates():
    model = DiT(DiTConfig(**TINY))
    out = model(torch.randn(1, 4, 2, 4, 4), torch.tensor([10.0]), torch.randn(1, 3, 16))
    assert torch.count_nonzero(out) == 0  # zero-initialised head: a fresh model predicts zero velocity
    assert torch.count_nonzero(model.condition_embedder.time_proj.weight) == 0


@pytest.mark.parametrize("shape,patch", [((2, 4, 1, 4, 6), (1, 2, 2)), ((1, 3, 4, 6, 2), (2, 2, 1)), ((1, 2, 5, 8, 8), (1, 4, 4))])
def test_patchify_round_trip(shape, patch):
    x = torch.randn(shape)
    tokens = patchify(x, patch)
    grid = patch_grid(x.shape, patch)
    assert tokens.shape == (shape[0], grid[0] * grid[1] * grid[2], shape[1] * patch[0] * patch[1] * patch[2])
    # unpatchify expects patch-major tokens; permute channel-major ones to check the round trip
    c = shape[1]
    pm = tokens.unflatten(-1, (c, -1)).transpose(-1, -2).flatten(-2)
    assert torch.equal(unpatchify(pm, grid, patch), x)


def test_patchify_rejects_bad_grid():
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        patchify(torch.randn(1, 4, 2, 5, 4), (1, 2, 2))


@pytest.mark.parametrize("grid", [(1, 1, 1), (3, 4, 5), (5, 8, 2), (2, 16, 16)])
def test_rope_is_a_rotation_and_relative(grid):
    head_dim = 12
    cos, sin = rope_3d(grid, head_dim)
    n = grid[0] * grid[1] * grid[2]
    assert cos.shape == sin.shape == (n, head_dim // 2)
    q, k = torch.randn(1, 1, n, head_dim, dtype=torch.float64), torch.randn(1, 1, n, head_dim, dtype=torch.float64)
    cos, sin = cos.double(), sin.double()
    rq = apply_rope(q, cos, sin)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1))  # rotation preserves norms
    # relative: the score between the same two vectors placed at (p, p+d) does not depend on p
    same_q, same_k = q[:, :, :1].expand(-1, -1, n, -1), k[:, :, :1].expand(-1, -1, n, -1)
    scores = (apply_rope(same_q, cos, sin) * apply_rope(same_k, cos, sin)).sum(-1)
    assert torch.allclose(scores, scores[..., :1].expand_as(scores))  # same position -> same score everywhere


def test_any_grid_runs_without_retraining():
    model = DiT(DiTConfig(**TINY)).eval()
    text = torch.randn(1, 3, 16)
    for shape in [(1, 4, 1, 2, 2), (1, 4, 5, 4, 8), (1, 4, 2, 10, 4)]:
        assert model(torch.randn(shape), torch.tensor([5.0]), text).shape == shape


def test_fast_gelu_is_wan_tanh_gelu_with_and_without_autograd():
    import torch.nn.functional as F

    from kinema.nn import gelu_tanh

    x = torch.randn(3, 50, 64) * 4
    with torch.no_grad():
        assert torch.allclose(gelu_tanh(x), F.gelu(x, approximate="tanh"), atol=2e-6)
    leaf = x.clone().requires_grad_()
    y = gelu_tanh(leaf)
    y.sum().backward()
    ref = x.clone().requires_grad_()
    F.gelu(ref, approximate="tanh").sum().backward()
    assert torch.equal(y.detach(), F.gelu(x, approximate="tanh")) and torch.allclose(leaf.grad, ref.grad)


def test_fast_rms_norm_is_torchs_with_and_without_autograd():
    from kinema.nn import RMSNorm

    torch.manual_seed(0)
    ours, ref = RMSNorm(64, eps=1e-6), torch.nn.RMSNorm(64, eps=1e-6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    x = torch.randn(2, 30, 64) * 3
    x0, xb = x.clone(), x.bfloat16()
    xb0 = xb.clone()
    with torch.inference_mode():
        fast = ours(x)
        assert torch.allclose(fast, ref(x), atol=1e-5, rtol=1e-5)
        half = ours(xb)
    assert half.dtype == torch.bfloat16 and (half.float() - fast).abs().max() < 0.05
    assert torch.equal(x, x0) and torch.equal(xb, xb0)  # inputs are not normalised in place
    y = ours(x.clone().requires_grad_())  # training takes torch's own path
    assert y.requires_grad and torch.allclose(y, fast, atol=1e-5, rtol=1e-5)
    # autocast training: a bf16 map, the fp32 weight; torch's values and gradients, without its warning
    leaf, ref_leaf = xb.clone().requires_grad_(), xb.clone().requires_grad_()
    always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # torch warns once per process: here, every time
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = ours(leaf)
    finally:
        torch.set_warn_always(always)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Mismatch dtype between input and weight ... fused implementation"
        y_ref = ref(ref_leaf)
    g = torch.randn(y.shape).bfloat16()
    y.backward(g)
    y_ref.backward(g)
    assert y.dtype == y_ref.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    assert torch.allclose(leaf.grad.float(), ref_leaf.grad.float(), atol=1e-2, rtol=1e-2)
    assert torch.allclose(ours.weight.grad, ref.weight.grad, atol=1e-3, rtol=1e-3)


def test_small_bf16_attention_matches_the_fused_kernel_with_and_without_autograd():
    """Short bf16 attention on a CPU runs as two matmuls and a softmax (faster there, forwards and backwards);
    it answers as the fused kernel does, padded keys and all-padding queries (zeros) included, its gradients
    are as close to fp32's as the fused kernel's, and fp32 keeps the fused kernel."""
    import torch.nn.functional as F

    from kinema.nn import attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 16, generator=g).bfloat16() for n in (10, 7, 7))
    grad_out = torch.randn(2, 3, 10, 16, generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False

    def with_grads(fn, dtype):
        leaves = [x.detach().to(dtype, copy=True).requires_grad_() for x in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad_out.to(dtype))
        return [out.detach().float()] + [x.grad.float() for x in leaves]

    for key_mask in (None, mask):
        sdpa_mask = None if key_mask is None else key_mask[:, None, None, :]
        fused = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=sdpa_mask)  # noqa: E731
        exact = with_grads(fused, torch.float32)
        with torch.no_grad():
            got = attention(q, k, v, key_mask)
        assert got.dtype == torch.bfloat16 and (got.float() - exact[0]).abs().max() < 0.03
        ours, theirs = with_grads(lambda a, b, c: attention(a, b, c, key_mask), torch.bfloat16), with_grads(
            fused, torch.bfloat16)
        for a, b, e in zip(ours, theirs, exact):  # output, dq, dk, dv
            assert (a - e).norm() <= 2 * (b - e).norm() + 1e-3 * e.norm() and (a - e).abs().max() < 0.05
        assert not torch.equal(ours[1], theirs[1])  # not the fused kernel: its own rounding
        assert torch.equal(attention(q.float(), k.float(), v.float(), key_mask), exact[0])  # fp32: the fused kernel
    mask[1] = False  # a row of padding only: zeros, as the fused kernel gives
    with torch.no_grad():
        got = attention(q, k, v, mask)
    assert torch.equal(got[1], torch.zeros_like(got[1])) and torch.isfinite(got).all()


def test_inference_normalises_and_rotates_q_and_k_in_one_fp32_pass(tmp_path):
    """Without autograd a bf16 q/k is RMS-normed and rotated in fp32 and rounded once: the same answer as the
    two-step path in fp32, and in bf16 no further from the fp32 answer than rounding twice."""
    from kinema.dit.model import Attention
    from kinema.weights import load_dit

    _reference(tmp_path)
    x, t, text = torch.randn(2, 4, 3, 8, 6), torch.tensor([500.0, 20.0]), torch.randn(2, 7, 16)
    two_step = lambda self, q, norm, rope: apply_rope(self._heads(norm(q)), *rope)  # noqa: E731
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        dit = load_dit(tmp_path / "transformer", dtype=dtype)
        with torch.no_grad():
            outs[dtype, "fused"] = dit(x.to(dtype), t, text.to(dtype)).float()
            real, Attention._rotated = Attention._rotated, two_step
            try:
                outs[dtype, "two"] = dit(x.to(dtype), t, text.to(dtype)).float()
            finally:
                Attention._rotated = real
    assert torch.allclose(outs[torch.float32, "fused"], outs[torch.float32, "two"], atol=1e-5)
    exact = outs[torch.float32, "two"]
    err = {k: (outs[torch.bfloat16, k] - exact).norm() / exact.norm() for k in ("fused", "two")}
    assert not torch.equal(outs[torch.bfloat16, "fused"], outs[torch.bfloat16, "two"])
    assert err["fused"] <= 1.1 * err["two"], err


def test_bf16_ffn_fuses_the_gelu_into_the_matmul_where_onednn_has_bf16():
    """On a CPU with native bf16 the FFN's first matmul applies the GELU to its fp32 accumulator (one rounding):
    as near the fp32 answer as the two-call path or nearer; elsewhere, and with autograd or a LoRA-style
    subclass of nn.Linear, the two calls run (bit for bit ``gelu_tanh(linear(x))``)."""
    import torch.nn.functional as F

    from kinema.nn import gelu_tanh, linear
    from kinema.nn import linear_gelu_tanh

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 256)
    x = torch.randn(2, 40, 64)
    exact = F.gelu(lin(x), approximate="tanh").detach()
    lin_b, xb = copy.deepcopy(lin).bfloat16(), x.bfloat16()
    with torch.no_grad():
        two_calls = gelu_tanh(lin_b(xb))
        got = linear_gelu_tanh(xb, lin_b)
    assert got.dtype == torch.bfloat16 and got.shape == (2, 40, 256)
    err = {k: (v.float() - exact).norm() / exact.norm() for k, v in (("got", got), ("two", two_calls))}
    assert err["got"] <= 1.05 * err["two"], err
    if linear.onednn_bf16():
        assert not torch.equal(got, two_calls)  # the fused kernel ran
    y = linear_gelu_tanh(xb, lin_b)  # autograd on: the two calls (gelu_tanh's autograd form)
    assert y.requires_grad and torch.equal(y.detach(), F.gelu(lin_b(xb), approximate="tanh"))

    class Sub(torch.nn.Linear):
        pass

    sub = Sub(64, 256).bfloat16()
    sub.load_state_dict(lin_b.state_dict())
    with torch.no_grad():
        assert torch.equal(linear_gelu_tanh(xb, sub), two_calls)
        assert torch.equal(linear_gelu_tanh(x, lin), gelu_tanh(lin(x)))  # fp32: two calls (no gain fused)
    linear.onednn_bf16.cache_clear()
    real = torch.ops.mkldnn._is_mkldnn_bf16_supported
    try:
        torch.ops.mkldnn._is_mkldnn_bf16_supported = lambda: False  # a CPU without native bf16
        with torch.no_grad():
            assert torch.equal(linear_gelu_tanh(xb, lin_b), two_calls)
    finally:
        torch.ops.mkldnn._is_mkldnn_bf16_supported = real
        linear.onednn_bf16.cache_clear()


def test_linear_keeps_a_onednn_layout_of_its_bf16_weight_with_the_same_bits_and_follows_changes():
    """kinema's Linear multiplies a bf16 CPU inference by a copy of its weight laid out once for oneDNN: bit for bit
    ``F.linear``; the copy follows the weight (replaced, or updated in place) and is never used under autograd,
    in fp32, for a layer above the size limit, or where oneDNN has no native bf16."""
    import torch.nn.functional as F

    from kinema.nn import Linear, linear

    torch.manual_seed(0)
    lin = Linear(64, 96).bfloat16()
    x = torch.randn(3, 17, 64).bfloat16()
    native = linear.onednn_bf16()
    with torch.no_grad():
        for _ in range(2):  # the second call reuses the copy
            assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
        assert ("_onednn_weight" in lin.__dict__) == native
        lin.weight.mul_(2)  # in place: the copy is made again
        assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
        lin.weight = torch.nn.Parameter(torch.randn(96, 64).bfloat16())  # replaced
        assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
        assert torch.equal(lin(x[0, :2]), F.linear(x[0, :2], lin.weight, lin.bias))  # any row count
        assert linear.onednn_weight(lin, x.float()) is None  # fp32: PyTorch's own path
    assert linear.onednn_weight(lin, x) is None and lin(x).requires_grad  # autograd: plain F.linear
    big = Linear(1024, 1025).bfloat16()
    with torch.no_grad():
        assert linear.onednn_weight(big, torch.randn(2, 1024).bfloat16()) is None  # above PACK_MAX_WEIGHTS
        if native:
            assert linear.onednn_weight(lin, x) is not None
    linear.onednn_bf16.cache_clear()
    real = torch.ops.mkldnn._is_mkldnn_bf16_supported
    try:
        torch.ops.mkldnn._is_mkldnn_bf16_supported = lambda: False
        with torch.no_grad():
            assert linear.onednn_weight(lin, x) is None and torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    finally:
        torch.ops.mkldnn._is_mkldnn_bf16_supported = real
        linear.onednn_bf16.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reusing_text_embeds_and_projects_a_text_once_with_bit_identical_outputs(dtype):
    """Inside ``reusing_text()`` a sampling loop's repeated text tensor is embedded once and its cross-attention
    keys and values projected once per block; another tensor (even equal) is computed afresh; leaving the
    context forgets everything; autograd never reuses."""
    torch.manual_seed(0)
    dit = DiT(DiTConfig(**TINY, patch_size=(1, 2, 2))).to_precision(dtype).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.2)
    x, t, text = torch.randn(2, 4, 3, 8, 6).to(dtype), torch.tensor([500.0, 20.0]), torch.randn(2, 7, 16).to(dtype)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    calls = {"text": 0, "k": 0}
    dit.condition_embedder.text_embedder.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1))
    for block in dit.blocks:
        block.attn2.to_k.register_forward_hook(lambda *a: calls.__setitem__("k", calls["k"] + 1))
    n = len(dit.blocks)
    with torch.no_grad():
        plain = [dit(x, t * s, text, mask) for s in (1.0, 0.5)]
        assert calls == {"text": 2, "k": 2 * n}
        with dit.reusing_text():
            reused = [dit(x, t * s, text, mask) for s in (1.0, 0.5)]
            assert calls == {"text": 3, "k": 3 * n}  # once for both calls
            other = dit(x, t, text.clone(), mask)  # an equal but different tensor: computed afresh
            assert calls == {"text": 4, "k": 4 * n} and torch.equal(other, plain[0])
        assert all(b.attn2.context_memo is None for b in dit.blocks) and dit._text_memo is None
        dit(x, t, text, mask)
        assert calls == {"text": 5, "k": 5 * n}
    assert all(torch.equal(a, b) for a, b in zip(plain, reused))
    with dit.reusing_text():
        for _ in range(2):
            dit(x, t, text, mask).sum().backward()  # training: recomputed on each call
    assert calls == {"text": 7, "k": 7 * n}
