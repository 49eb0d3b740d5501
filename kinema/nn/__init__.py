"""Neural-network building blocks shared by the models: attention, RoPE, norms, timestep features."""

from .activation import gelu_tanh, linear_gelu_tanh
from .attention import attention
from .embeddings import apply_rope, rope_3d, rope_split, timestep_features
from .linear import Linear
from .norms import ChannelRMSNorm, FP32LayerNorm, FrameNorm, RMSNorm

__all__ = ["gelu_tanh", "linear_gelu_tanh", "attention", "apply_rope", "rope_3d", "rope_split", "timestep_features",
           "ChannelRMSNorm", "FP32LayerNorm", "FrameNorm", "Linear", "RMSNorm"]
