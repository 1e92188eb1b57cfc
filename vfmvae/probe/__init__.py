"""Linear probe of tokenizer latents (paper Table 1, "linear probe" column), in plain PyTorch.

Public entry points:
    LinearProbe, ParameterFreeBatchNorm      the classifier on the flattened latent and its normalisation
    LARS, warmup_cosine_lr                   MAE's linear-probe optimiser and learning-rate schedule
    PROBE_PROTOCOLS, probe_protocol          named schedules ("mae": the paper-scale default)
"""

from .lars import LARS, warmup_cosine_lr
from .linear_probe import LinearProbe, ParameterFreeBatchNorm
from .protocol import PROBE_PROTOCOLS, ProbeProtocol, probe_protocol

__all__ = [
    "LinearProbe",
    "ParameterFreeBatchNorm",
    "LARS",
    "warmup_cosine_lr",
    "PROBE_PROTOCOLS",
    "ProbeProtocol",
    "probe_protocol",
]
