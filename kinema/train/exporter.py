"""Export a checkpoint's EMA weights for inference: a kinema model folder, or a LoRA file.

Runs in one process from the checkpoint files alone (DCP reads any sharding back as whole tensors):
a full DiT run gives a model folder (``kinema generate --model OUT``) with the run's VAE beside it; a
VAE run gives a folder holding the VAE (pass it as ``vae_from`` to DiT runs); a distillation run gives
the teacher's model folder with the few-step student beside it (``kinema.weights.student``); a LoRA run
gives a small safetensors file (``kinema generate --lora OUT[:scale]``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from kinema.common.video import pixels_to_model
from kinema.config import ModelConfig
from kinema.train.build import build_models
from kinema.train.checkpoint import dcp_load, read_meta
from kinema.train.config import TrainError, load_config
from kinema.train.logging import print0
from kinema.train.lora import file_tensors, save_lora


def ema_weights(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The EMA tensors of a checkpoint, whole, by parameter name."""
    path = Path(checkpoint_dir)
    metadata = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    shapes = {key[len("ema."):]: m for key, m in metadata.items() if key.startswith("ema.")}
    if not shapes:
        raise TrainError(f"{path} holds no EMA weights")
    ema = {name: torch.empty(m.size, dtype=m.properties.dtype) for name, m in shapes.items()}
    dcp_load({"ema": ema}, path, single_process=True)
    return ema


@torch.inference_mode()
def latent_statistics(vae, cfg, model_cfg: ModelConfig, clips: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the raw posterior means of ``clips`` clips of the run's own data."""
    from kinema.train.data import build_dataset

    # another seed: clips the run did not start on; captions unused (a VAE run), so motions are not read back
    data = build_dataset(cfg.data, model_cfg, cfg.seed + 1, captioned=False)
    total = total_sq = count = 0
    for index in range(min(clips, len(data))):
        item = data[index]
        if item.video is None:
            continue
        z = vae.encode(pixels_to_model(item.video[None]), normalize=False).double()  # (1, C, f, h, w)
        total = total + z.sum(dim=(0, 2, 3, 4))
        total_sq = total_sq + z.square().sum(dim=(0, 2, 3, 4))
        count += z[0, 0].numel()
    if not count:
        raise TrainError("no clip of the run's data could be loaded to measure latent statistics")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(1e-8).sqrt()
    return [round(float(m), 5) for m in mean], [round(float(s), 5) for s in std]


def export(checkpoint_dir: str | Path, out: str | Path, latent_clips: int = 64) -> Path:
    """Write the EMA weights of ``checkpoint_dir`` to ``out`` (a model folder, or a .safetensors file for LoRA runs).

    A VAE run's folder also gets the latent statistics (per-channel mean/std, Wan's ``latents_mean/std``)
    measured on ``latent_clips`` clips of its data, so DiTs trained on it see unit-variance latents."""
    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    meta = read_meta(checkpoint_dir)
    cfg = load_config(meta["config"])
    model_cfg = ModelConfig.from_dict(meta["model_config"])
    ema = ema_weights(checkpoint_dir)
    if cfg.lora.rank:
        scale = (cfg.lora.alpha if cfg.lora.alpha is not None else cfg.lora.rank) / cfg.lora.rank
        target = out if out.suffix == ".safetensors" else out / "lora.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        return save_lora(target, file_tensors(ema, scale), {
            "rank": str(cfg.lora.rank), "alpha": str(cfg.lora.alpha or cfg.lora.rank), "step": str(meta["step"]),
            "base_model": str(cfg.init_from or cfg.preset), "targets": ",".join(cfg.lora.targets)})

    from kinema.weights import save_model

    torch.manual_seed(cfg.seed)  # rebuilds the run's VAE exactly, even a freshly initialised one
    models = build_models(cfg, torch.device("cpu"), needs_vae=cfg.model == "dit")
    trained = {name for name, p in models.network.named_parameters() if p.requires_grad}  # frozen ones: init_from's
    missing = sorted(trained - set(ema))
    if missing:
        raise TrainError(f"{checkpoint_dir}: the EMA lacks {missing[:5]}; the checkpoint does not match its config")
    models.network.load_state_dict(ema, strict=False)
    if cfg.model == "vae":
        vae = models.network.eval()
        if cfg.vae_loss.decoder_only:  # same encoder, same latents: keep the statistics DiTs were trained with
            print0(f"decoder-only run: latent statistics kept from {cfg.init_from}")
        elif latent_clips:
            mean, std = latent_statistics(vae, cfg, model_cfg, latent_clips)
            vae_cfg = model_cfg.vae.replace(latents_mean=tuple(mean), latents_std=tuple(std))
            model_cfg = model_cfg.replace(vae=vae_cfg)
            weights = vae.state_dict()
            vae = type(vae)(vae_cfg)
            vae.load_state_dict(weights)
            print0(f"latent statistics from {latent_clips} training clips: mean {min(mean):+.2f}..{max(mean):+.2f}, "
                   f"std {min(std):.2f}..{max(std):.2f} (stored in the VAE config: DiT runs see unit-variance latents)")
        return save_model(out, model_cfg, vae=vae.eval())
    if cfg.distill is not None:
        from kinema.train.distill import export_student

        return export_student(meta, cfg, models.network.eval(), models.vae, out)
    if models.vae is not None:  # the config of the VAE saved beside the DiT (a run on latents before 2026-11-28
        model_cfg = model_cfg.replace(vae=models.vae.cfg)  # recorded the preset's latent statistics, not its VAE's)
    if models.random_vae and cfg.data.kind == "latents":
        print0(f"note: {out} gets a freshly initialised VAE (the run had no vae_from / init_from); generating "
               "needs the VAE the cached latents came from: replace its vae.safetensors")
    return save_model(out, model_cfg, dit=models.network.eval(), vae=models.vae)
