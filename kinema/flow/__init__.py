"""Flow matching as pure math: interpolant, target, timesteps and shift, samplers, guidance.

Nothing here imports a network; samplers take a ``velocity(x, t)`` function.
"""

from kinema.flow.guidance import FULL_INTERVAL, cfg, check_interval, guided
from kinema.flow.objective import expand_t, flow_loss, interpolate, predict_x0, velocity_target
from kinema.flow.samplers import SAMPLERS, euler, get_sampler, heun, unipc
from kinema.flow.schedule import draw_t, resolution_shift, sample_t, sampling_schedule, shift_t

__all__ = [
    "FULL_INTERVAL",
    "SAMPLERS",
    "cfg",
    "check_interval",
    "draw_t",
    "euler",
    "expand_t",
    "flow_loss",
    "get_sampler",
    "guided",
    "heun",
    "interpolate",
    "predict_x0",
    "resolution_shift",
    "sample_t",
    "sampling_schedule",
    "shift_t",
    "unipc",
    "velocity_target",
]
