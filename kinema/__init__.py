"""kinema: an open, self-hostable Sora — a spacetime-patch Diffusion Transformer over a causal video VAE.

    import kinema
    pipe = kinema.load()                     # the bundled model; or kinema.load("path/to/model")
    video = pipe.generate("a red ball bounces on the floor", seed=0)
    video.save("ball.mp4")
"""

__version__ = "0.1.0"


def load(path=None, device: str = "cpu", dtype="auto", lora=None):
    """A ready Pipeline for a kinema or diffusers Wan folder (None = the bundled model).

    ``dtype``: "auto" (as the CLI: bf16 where the device computes it natively, else fp32), "fp32", "bf16",
    "fp16" or a ``torch.dtype``.
    """
    from .infer import Pipeline
    return Pipeline.from_pretrained(path, device=device, dtype=dtype, lora=lora)


def __getattr__(name):
    if name in ("Pipeline", "Settings", "Video", "InputError"):
        from . import infer
        return getattr(infer, name)
    if name in ("load_dit", "load_vae", "save_model"):
        from . import weights
        return getattr(weights, name)
    raise AttributeError(f"module 'kinema' has no attribute {name!r}")
