"""The one interface every diffusion network implements (docs/design.md, "Diffusion networks and the
network interface").

The training objective (`vfmvae.transport.objective`), the samplers (`vfmvae.transport.sampling`), the
`DiffusionModule`, the alignment / sample-grid / SE-CKNNA callbacks and the scripts talk to a network
only through :class:`DiffusionNetwork`. Everything a family does differently (its time convention, the
class token REG carries in its state, which sampler the paper used, which tokens a probe averages) is
answered by the network itself, in its own file. A new network (a text-conditioned DiT, a baseline) is a
new file in `vfmvae/dit/` that implements this protocol and registers itself
(`vfmvae.dit.registry.register_network`); nothing else changes.

Vocabulary (shapes with batch ``B``):

* **latent** ``(B, C, h, w)``: the normalised tokenizer latent, ``latent_shape = (C, h, w)``.
* **state**: what a sampler integrates and the objective noises. Either the latent alone, or a tuple
  whose first component is the latent and whose further components are extra vectors moved along the
  same path (REG: ``(latent, class token (B, class_token_dim))``). See `vfmvae.transport.state`.
* **condition** ``(B, ...)``: what the network is conditioned on; its type and its *null* value for
  classifier-free guidance are described by ``network.condition`` (:class:`ConditionSpec`). Class ids
  ``(B,)`` int64 today (`vfmvae.dit.conditions.ClassLabels`); a text-conditioned network would use
  embeddings ``(B, L, D)`` with its own spec.
* **time** ``t`` ``(B,)``: in the network's own ``time_convention`` (LightningDiT: t = 1 is data; REG:
  t = 1 is noise; docs/design.md, "Time conventions"). Nothing converts a network's time for it.
* **alignment targets** (the ``batch["alignment"]`` mapping the joint-alignment callback writes):
  ``{"proj_targets": [(B, T, alignment_dim)], "cls_target": (B, D) | None, "proj_weight": float,
  "cls_weight": float}``. A network with ``class_token_dim`` set expects targets of ``1 + N`` tokens
  (token 0 = the class token); a projector-only network expects the ``N`` patch tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from vfmvae.transport.paths import TimeConvention
from vfmvae.transport.state import State

__all__ = [
    "ConditionSpec",
    "DiffusionNetwork",
    "NetworkOutput",
    "SamplerPresets",
    "TrainingState",
    "check_network",
    "is_diffusion_network",
    "vfm_class_token_state",
]


@runtime_checkable
class ConditionSpec(Protocol):
    """What a network is conditioned on, and its null value for classifier-free guidance."""

    def from_batch(self, batch: Mapping[str, Any]) -> Tensor:
        """The condition ``(B, ...)`` of a training batch (class ids: ``batch["label"]``)."""

    def null(self, n: int, device: torch.device | str) -> Tensor:
        """``n`` unconditional values (probes run the network unconditioned)."""

    def null_like(self, condition: Tensor) -> Tensor:
        """The unconditional value in the shape of ``condition`` (the CFG branch)."""

    def draw(self, mode: str, n: int, *, offset: int = 0, generator: torch.Generator | None = None) -> Tensor:
        """``n`` conditions to sample with (CPU); ``mode`` "random" or "balanced" (see `ClassLabels`)."""


@dataclass(frozen=True)
class SamplerPresets:
    """Names of `vfmvae.transport.SAMPLER_PRESETS` entries: the paper's sampler and its no-CFG twin."""

    default: str
    no_cfg: str


@dataclass
class TrainingState:
    """What the objective noises and regresses for one batch (from :meth:`DiffusionNetwork.training_state`).

    ``components``: clean data values, component 0 the latent ``(B, C, h, w)``, further ones extra
    vectors (REG's class token ``(B, D)``); ``term_names``/``weights``: the name of each component's MSE
    term and its weight in the total (component 0: ``"mse"``, weight 1); ``projection_targets``: one
    ``(B, T, D)`` target per projector, or ``None`` when this batch has no alignment term;
    ``projection_weight``: weight of the projection term.
    """

    components: tuple[Tensor, ...]
    term_names: tuple[str, ...] = ("mse",)
    weights: tuple[float, ...] = (1.0,)
    projection_targets: list[Tensor] | None = None
    projection_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (len(self.components) == len(self.term_names) == len(self.weights)) or not self.components:
            raise ValueError(
                f"TrainingState needs one term name and weight per component, got {len(self.components)} "
                f"components, names {self.term_names}, weights {self.weights}"
            )

    @property
    def state(self) -> State:
        """The components as a sampler state (a bare latent when there is one component)."""
        return self.components[0] if len(self.components) == 1 else tuple(self.components)


class NetworkOutput(NamedTuple):
    """One training forward: ``velocity`` in the structure of the state it was given, the projector
    outputs ``projections`` (one ``(B, T, D)`` per projector, possibly empty), and ``unused`` outputs
    that no loss term reads in this call (e.g. REG's class-token head when the state has no class token).
    The objective adds ``0 x`` the unused outputs (and unmatched projections) to the total, so every
    parameter receives a gradient and DDP never waits for a reduction that does not come."""

    velocity: State
    projections: Sequence[Tensor] = ()
    unused: Sequence[Tensor] = ()


@runtime_checkable
class DiffusionNetwork(Protocol):
    """A velocity network over latents, with everything the rest of the code needs to drive it.

    Attributes (read-only):
        time_convention: `TimeConvention` its weights embed ``t`` in.
        latent_shape: ``(C, h, w)`` of the normalised latents it takes.
        token_grid: side of its patch-token grid (16 for XL/1 on 16x16 latents); the alignment VFM's
            token grid must match it.
        num_blocks / blocks: the repeated transformer blocks (``nn.ModuleList``): the FSDP2 and
            activation-checkpointing units, and the ``block_i`` features of the probes.
        alignment_dim: width of the (first) projector's output, ``None`` without a projector.
        class_token_dim: width of the VFM class token carried in its state, ``None`` if the state is the
            latent alone.
        condition: the :class:`ConditionSpec` of what it is conditioned on.
        sampler_presets: :class:`SamplerPresets` (the paper's sampler and the no-CFG one).

    Optional attributes: ``config`` (a dataclass of its shapes, recorded in checkpoints) and
    ``fsdp_forward_methods`` (names of methods that run parameters without going through ``forward``;
    FSDP2 hooks them). Anything that runs parameters should go through ``forward`` or be listed there.
    """

    time_convention: TimeConvention
    latent_shape: tuple[int, int, int]
    token_grid: int
    num_blocks: int
    blocks: nn.ModuleList
    alignment_dim: int | None
    class_token_dim: int | None
    condition: ConditionSpec
    sampler_presets: SamplerPresets

    def initial_state(self, n: int, generator: torch.Generator | None, device: torch.device | str) -> State:
        """Pure noise ``N(0, I)`` float32 at the sampler's start, every state component (latent first)."""

    def velocity(self, state: State, t: Tensor, condition: Tensor) -> State:
        """The velocity of ``state`` at ``t`` (native convention), same structure: what samplers integrate."""

    def training_state(self, latents: Tensor, alignment: Mapping[str, Any] | None) -> TrainingState:
        """The clean state, per-component weights and projection targets of one batch."""

    def training_forward(self, state: State, t: Tensor, condition: Tensor) -> NetworkOutput:
        """Velocity, projector outputs and unused outputs for a noisy training ``state``."""

    def block_features(self, state: State, t: Tensor, condition: Tensor) -> dict[str, Tensor]:
        """Tokens the probes average, ``{name: (B, T, D)}``: ``embedder``, ``block_i`` (0-based),
        ``final_layer`` and, with a projector, ``projector_j``, each restricted to the tokens the
        official feature extractor averages (REG: patch tokens for blocks, all tokens for projectors)."""


_REQUIRED = (
    "time_convention",
    "latent_shape",
    "token_grid",
    "num_blocks",
    "blocks",
    "alignment_dim",
    "class_token_dim",
    "condition",
    "sampler_presets",
    "initial_state",
    "velocity",
    "training_state",
    "training_forward",
    "block_features",
)


def is_diffusion_network(obj: Any) -> bool:
    """Whether ``obj`` is an ``nn.Module`` with every :class:`DiffusionNetwork` member."""
    return isinstance(obj, nn.Module) and all(hasattr(obj, name) for name in _REQUIRED)


def check_network(net: Any, what: str = "the diffusion network") -> nn.Module:
    """``net`` if it implements :class:`DiffusionNetwork`, else a one-line error naming what is missing."""
    missing = [name for name in _REQUIRED if not hasattr(net, name)]
    if missing or not isinstance(net, nn.Module):
        raise TypeError(
            f"{what} ({type(net).__name__}) does not implement vfmvae.dit.interface.DiffusionNetwork: "
            f"missing {missing or ['nn.Module']}"
        )
    return net


def vfm_class_token_state(
    latents: Tensor, alignment: Mapping[str, Any] | None, class_token_dim: int | None, alignment_dim: int | None
) -> TrainingState:
    """The training state of a network with an optional projector and optional VFM class token.

    Without alignment: the latent alone. With alignment: the projection targets (an error without a
    projector) and, when ``class_token_dim`` is set, the class-token target as a second component with
    weight ``alignment["cls_weight"]`` (term ``cls_mse``). Shared by LightningDiT (+REPA) and REG SiT.
    """
    if alignment is None:
        return TrainingState((latents,))
    if alignment_dim is None:
        raise ValueError(
            "the alignment callback supplies targets, but this network has no projector: "
            "set repa_encoder_depth (REPA option) or remove the callback"
        )
    targets = list(alignment["proj_targets"])
    weight = float(alignment["proj_weight"])
    if class_token_dim is None:
        return TrainingState((latents,), projection_targets=targets, projection_weight=weight)
    if alignment.get("cls_target") is None:
        raise ValueError("this network carries a class token: the alignment callback must give cls_target (got None)")
    cls = alignment["cls_target"].to(latents.dtype)
    return TrainingState(
        (latents, cls),
        ("mse", "cls_mse"),
        (1.0, float(alignment["cls_weight"])),
        projection_targets=targets,
        projection_weight=weight,
    )
