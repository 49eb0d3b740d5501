#!/usr/bin/env bash
# The bundled model (kinema/assets/world-small) from scratch, stage by stage, as its weights were trained:
#   bash scripts/world_small.sh          (RUNS=DIR to put the runs elsewhere; default runs/)
# A stopped stage resumes where it stopped when the script is run again; a finished one (its model/ folder
# exists) is skipped. Step counts are the shipped weights'. Stages 1-4, 6, 11-13 and 16-20 ran on 2 CPU cores (1.2-1.6
# s per step), stages 5 and 7 on one H200 (1536 steps in 11 minutes, then 6000 echoed steps in 10; stage 5's
# batches are 4x the CPU recipe's, so about 6 s a step on 2 cores), 8 on one H100, 9 and 10 one after the
# other on one H200, and so 14 and 15. The numbers a rerun reaches will differ a little: the VAE's first 8600
# steps ran before crops kept the busiest window (crop_tries), stages 5, 7 and 8 stopped on a time limit and
# resumed once, and stages 7, 8, 9, 14, 15 and 19 started from the previous stages' fp16-bundled weights.
set -euo pipefail
R=${RUNS:-runs}

stage() {  # stage NAME CONFIG [--key value ...]: kinema train into $R/NAME unless it already exported a model
    local out="$R/$1"; shift
    if [ -f "$out/model/kinema.json" ]; then echo "== $out: done, skipped"; return; fi
    local resume=(); [ -d "$out/checkpoints" ] && resume=(--resume)
    echo "== $out"
    kinema train "$@" --out_dir "$out" "${resume[@]}"
}

# 1-4. The VAE: from scratch; its decoder alone; object-weighted; object-weighted on 9- and 17-frame clips.
stage world-small-vae configs/world-small-vae.toml --max_steps 9700
stage world-small-vae-dec configs/world-small-vae.toml --init_from "$R/world-small-vae/model" --vae_loss.decoder_only true --optim.lr 1e-3 --ema.decay 0.995 --max_steps 1200
stage world-small-vae-obj configs/world-small-vae.toml --init_from "$R/world-small-vae-dec/model" --vae_loss.object_weight 10 --optim.lr 3e-4 --max_steps 1500
stage world-small-vae-obj2 configs/world-small-vae.toml --init_from "$R/world-small-vae-obj/model" --vae_loss.object_weight 10 --optim.lr 3e-4 --optim.warmup_steps 20 --max_steps 1800 --data.buckets '[{"frames": 9, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4}, {"frames": 17, "height": 64, "width": 64, "batch_size": 2, "crop_scale": 2, "crop_tries": 4, "weight": 0.5}, {"frames": 1, "height": 64, "width": 64, "batch_size": 8, "crop_scale": 2, "crop_tries": 4, "weight": 0.3}, {"frames": 5, "height": 48, "width": 80, "batch_size": 4, "crop_scale": 2, "crop_tries": 4, "weight": 0.3}]'
# 5. The DiT on that VAE's latents (the GPU recipe; configs/world-small-dit.toml is its 2-core equivalent).
stage world-small-dit-gpu configs/world-small-dit-gpu.toml --vae_from "$R/world-small-vae-obj2/model" --max_steps 1536
# 6. The decoder once more, on 17-frame clips (the encoder, hence the DiT's latents, stays as it was).
stage world-small-vae-dec2 configs/world-small-vae.toml --init_from "$R/world-small-vae-obj2/model" --vae_loss.decoder_only true --vae_loss.object_weight 10 --optim.lr 3e-4 --optim.warmup_steps 20 --ema.decay 0.995 --max_steps 600 --data.buckets '[{"frames": 17, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4}, {"frames": 9, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4, "weight": 0.5}, {"frames": 1, "height": 64, "width": 64, "batch_size": 8, "crop_scale": 2, "crop_tries": 4, "weight": 0.2}]'

# 7. The DiT further, with data echoing and more 128 px clips (one GPU: 6000 steps in 10 minutes).
stage world-small-dit-echo configs/world-small-dit-echo.toml --init_from "$R/world-small-dit-gpu/model" --vae_from "$R/world-small-vae-dec2/model"
# 8. The DiT further, 4x the batches (one GPU: 2690 steps of a 3000-step schedule in 11.5 minutes).
stage world-small-dit-echo2 configs/world-small-dit-echo2.toml --init_from "$R/world-small-dit-echo/model" --vae_from "$R/world-small-vae-dec2/model"
# 9. The DiT further at a lower peak rate (one GPU to itself: 1900 steps in 6.5 minutes).
stage world-small-dit-echo3 configs/world-small-dit-echo3.toml --init_from "$R/world-small-dit-echo2/model" --vae_from "$R/world-small-vae-dec2/model"
# 10. The 4-step student, distilled from stage 9's DiT (the same GPU, right after: 457 steps of a 600-step
#     schedule in 5 minutes, 4x the config's batches).
stage world-small-distill configs/world-small-distill.toml --init_from "$R/world-small-dit-echo3/model" --max_steps 457 --optim.schedule_steps 600 --sample.every 0 --data.num_workers 14 --data.buckets '[{"frames": 17, "height": 128, "width": 128, "batch_size": 16}, {"frames": 17, "height": 96, "width": 160, "batch_size": 16, "weight": 0.5}, {"frames": 17, "height": 160, "width": 96, "batch_size": 16, "weight": 0.25}, {"frames": 33, "height": 128, "width": 128, "batch_size": 8, "weight": 0.25}, {"frames": 1, "height": 128, "width": 128, "batch_size": 64, "weight": 0.25}]'

# 11-13. The decoder again, with the temporal term (frame-to-frame steps against the clip's; 2 CPU cores, 30,
#     12 and 12 minutes), the second with the steps across latent frames weighted 4x, the third 8x. The DiT's
#     latents do not change.
stage world-small-vae-dec3 configs/world-small-vae.toml --init_from "$R/world-small-vae-dec2/model" --vae_loss.decoder_only true --vae_loss.object_weight 10 --vae_loss.temporal_weight 1.0 --optim.lr 2e-4 --optim.warmup_steps 20 --ema.decay 0.995 --max_steps 1500 --data.buckets '[{"frames": 17, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4}, {"frames": 9, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4, "weight": 0.5}, {"frames": 1, "height": 64, "width": 64, "batch_size": 8, "crop_scale": 2, "crop_tries": 4, "weight": 0.2}]'
stage world-small-vae-dec4 configs/world-small-vae.toml --init_from "$R/world-small-vae-dec3/model" --vae_loss.decoder_only true --vae_loss.object_weight 10 --vae_loss.temporal_weight 1.0 --vae_loss.temporal_across_weight 4 --optim.lr 2e-4 --optim.warmup_steps 20 --ema.decay 0.995 --max_steps 600 --data.buckets '[{"frames": 17, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4}, {"frames": 9, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4, "weight": 0.5}, {"frames": 1, "height": 64, "width": 64, "batch_size": 8, "crop_scale": 2, "crop_tries": 4, "weight": 0.2}]'
stage world-small-vae-dec5 configs/world-small-vae.toml --init_from "$R/world-small-vae-dec4/model" --vae_loss.decoder_only true --vae_loss.object_weight 10 --vae_loss.temporal_weight 1.0 --vae_loss.temporal_across_weight 8 --optim.lr 2e-4 --optim.warmup_steps 20 --ema.decay 0.995 --max_steps 600 --data.buckets '[{"frames": 17, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4}, {"frames": 9, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4, "weight": 0.5}, {"frames": 1, "height": 64, "width": 64, "batch_size": 8, "crop_scale": 2, "crop_tries": 4, "weight": 0.2}]'
# 14-15. The student of stage 10 distilled further from the same teacher (distill.continue_student; one H200,
#     8 and 4 minutes, each its own learning-rate schedule): 6 of the world benchmark's 25 row cells more than 5
#     points below its teacher, from 12.
stage world-small-distill2 configs/world-small-distill.toml --init_from "$R/world-small-distill/model" --distill.continue_student true --max_steps 680 --optim.lr 3e-5 --optim.warmup_steps 20 --sample.every 0 --data.num_workers 14 --data.buckets '[{"frames": 17, "height": 128, "width": 128, "batch_size": 16}, {"frames": 17, "height": 96, "width": 160, "batch_size": 16, "weight": 0.5}, {"frames": 17, "height": 160, "width": 96, "batch_size": 16, "weight": 0.25}, {"frames": 33, "height": 128, "width": 128, "batch_size": 8, "weight": 0.25}, {"frames": 1, "height": 128, "width": 128, "batch_size": 64, "weight": 0.25}]'
stage world-small-distill3 configs/world-small-distill.toml --init_from "$R/world-small-distill2/model" --distill.continue_student true --max_steps 330 --optim.lr 2e-5 --optim.warmup_steps 10 --sample.every 0 --data.num_workers 14 --data.buckets '[{"frames": 17, "height": 128, "width": 128, "batch_size": 16}, {"frames": 17, "height": 96, "width": 160, "batch_size": 16, "weight": 0.5}, {"frames": 17, "height": 160, "width": 96, "batch_size": 16, "weight": 0.25}, {"frames": 33, "height": 128, "width": 128, "batch_size": 8, "weight": 0.25}, {"frames": 1, "height": 128, "width": 128, "batch_size": 64, "weight": 0.25}]'
# 16. The decoder once more, the steps across latent frames weighted 16x (2 CPU cores, 13 minutes).
stage world-small-vae-dec6 configs/world-small-vae.toml --init_from "$R/world-small-vae-dec5/model" --vae_loss.decoder_only true --vae_loss.object_weight 10 --vae_loss.temporal_weight 1.0 --vae_loss.temporal_across_weight 16 --optim.lr 2e-4 --optim.warmup_steps 20 --ema.decay 0.995 --max_steps 600 --data.buckets '[{"frames": 17, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4}, {"frames": 9, "height": 64, "width": 64, "batch_size": 4, "crop_scale": 2, "crop_tries": 4, "weight": 0.5}, {"frames": 1, "height": 64, "width": 64, "batch_size": 8, "crop_scale": 2, "crop_tries": 4, "weight": 0.2}]'

# 17-18. The decoder on whole frames (every stage before saw crops): its per-frame norm's statistics are a whole
#     frame's at inference, and a sky over a meadow came back as smears of colour. 1000 + 1400 steps (2 CPU
#     cores, 26 + 36 minutes; the second with another data seed, so it sees new clips).
stage world-small-vae-dec7 configs/world-small-vae.toml --init_from "$R/world-small-vae-dec6/model" --vae_loss.decoder_only true --vae_loss.object_weight 10 --vae_loss.temporal_weight 1.0 --vae_loss.temporal_across_weight 16 --optim.lr 2e-4 --optim.warmup_steps 20 --ema.decay 0.995 --max_steps 1000 --data.buckets '[{"frames": 17, "height": 128, "width": 128, "batch_size": 1}, {"frames": 17, "height": 96, "width": 160, "batch_size": 1, "weight": 0.5}, {"frames": 17, "height": 160, "width": 96, "batch_size": 1, "weight": 0.25}, {"frames": 9, "height": 128, "width": 128, "batch_size": 2, "weight": 0.5}, {"frames": 1, "height": 128, "width": 128, "batch_size": 4, "weight": 0.25}]'
stage world-small-vae-dec8 configs/world-small-vae.toml --init_from "$R/world-small-vae-dec7/model" --seed 1 --vae_loss.decoder_only true --vae_loss.object_weight 10 --vae_loss.temporal_weight 1.0 --vae_loss.temporal_across_weight 16 --optim.lr 2e-4 --optim.warmup_steps 20 --ema.decay 0.995 --max_steps 1400 --data.buckets '[{"frames": 17, "height": 128, "width": 128, "batch_size": 1}, {"frames": 17, "height": 96, "width": 160, "batch_size": 1, "weight": 0.5}, {"frames": 17, "height": 160, "width": 96, "batch_size": 1, "weight": 0.25}, {"frames": 9, "height": 128, "width": 128, "batch_size": 2, "weight": 0.5}, {"frames": 1, "height": 128, "width": 128, "batch_size": 4, "weight": 0.25}]'
# 19-20. The DiT on clips that start mid-way through their scenes (extension continues from such clips; 2 CPU
# cores, bf16, 56 + 55 minutes), the second stage with falls and bounces back to whole scenes. Stage 19 started
# from the fp16 bundle of stage 9's DiT with stage 18's VAE, which is what these two flags load.
stage world-small-dit-span configs/world-small-dit-span.toml --init_from "$R/world-small-dit-echo3/model" --vae_from "$R/world-small-vae-dec8/model" --max_steps 7000
stage world-small-dit-span-physics configs/world-small-dit-span-physics.toml --init_from "$R/world-small-dit-span/model" --max_steps 3889
# The student of stages 14-15 carried over to stage 20's DiT: itself plus what stages 19-20 changed.
python scripts/carry_student.py --student "$R/world-small-distill3/model" --old "$R/world-small-dit-echo3/model" --new "$R/world-small-dit-span-physics/model" --out "$R/world-small-student-carried"
python scripts/bundle_model.py "$R/world-small-dit-span-physics/model" --student "$R/world-small-student-carried"
