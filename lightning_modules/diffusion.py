"""`DiffusionModule`: flow-matching training of a diffusion network (LightningDiT-XL/1, REG SiT-XL/1, or any
registered `vfmvae.dit.interface.DiffusionNetwork`) on cached latents.

The paper's diffusion runs (docs/design.md, "Diffusion training"): AdamW (lr 2e-4, betas
(0.9, 0.95), wd 0, constant lr), global batch 1024, EMA 0.9999 over the network only
(`callbacks.ema.EMACallback` with ``attributes: [net]``), gradient clipping 1.0 for REG, none for
LightningDiT, and for LightningDiT the logit-normal -> uniform time switch at step 600k (one run instead of
the two official stage yamls). This module only orchestrates: the network comes from the registry
(`vfmvae.dit.registry`), the loss terms from `vfmvae.transport.DiffusionObjective`, and it steps the
optimiser, guards against non-finite steps and logs. It never asks which family it trains.

Batches: ``{"latent": (B, C, h, w) float32 normalised, "label": (B,) int64, ...}`` (the condition is read
by ``net.condition.from_batch``). When the joint-alignment callback (`callbacks/joint_alignment.py`) runs,
it adds ``batch["alignment"]`` (targets and weights, see `vfmvae.dit.interface`); the network turns it
into its training state (REG: the class token joins the noised state; LightningDiT with a REPA
projector: a projection term). Without it REG runs with a zero class token and no alignment terms.

Global batch: ``global_batch_size`` = world size x micro-batch x accumulation. The micro-batch is
``global_batch_size / world`` unless ``micro_batch_size`` is given (then accumulation makes up the
rest); anything not divisible is an error. The module sets the DataModule's per-device batch
size and accumulates itself (manual optimisation), because the non-finite guard must be able to
drop a whole optimiser step (`vfmvae.utils.guard.NonFiniteGuard`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from lightning.pytorch import LightningModule

from datamodules.latent_dataset import find_latent_dataset
from vfmvae.dit.parallelize import shard_diffusion_network
from vfmvae.dit.registry import build_from_hparams
from vfmvae.provenance import state_dict_sha256, to_jsonable
from vfmvae.text.weights_record import check_text_encoders, text_encoder_records
from vfmvae.transport import TRANSPORT_PRESETS, DiffusionObjective, TransportConfig, parse_convention
from vfmvae.utils.guard import NonFiniteGuard
from vfmvae.utils.rng import RankRNGStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPlan:
    """``global_batch_size = world_size * micro_batch_size * accumulation``."""

    global_batch_size: int
    world_size: int
    micro_batch_size: int
    accumulation: int

    @classmethod
    def derive(cls, global_batch_size: int, world_size: int, micro_batch_size: int | None = None) -> BatchPlan:
        if global_batch_size < 1 or world_size < 1:
            raise ValueError(f"global_batch_size ({global_batch_size}) and world size ({world_size}) must be >= 1")
        if global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size {global_batch_size} is not divisible by the world size {world_size} "
                "(devices x nodes)"
            )
        per_rank = global_batch_size // world_size
        micro = per_rank if micro_batch_size is None else int(micro_batch_size)
        if micro < 1 or per_rank % micro:
            raise ValueError(
                f"micro_batch_size {micro} must divide the per-device batch {per_rank} "
                f"(= global_batch_size {global_batch_size} / world size {world_size})"
            )
        return cls(global_batch_size, world_size, micro, per_rank // micro)


def transport_config(preset: str, overrides: dict[str, Any] | None = None) -> TransportConfig:
    """A :data:`vfmvae.transport.TRANSPORT_PRESETS` entry with field overrides."""
    if preset not in TRANSPORT_PRESETS:
        raise ValueError(f"unknown transport preset {preset!r}; choose one of {sorted(TRANSPORT_PRESETS)}")
    return TransportConfig(**{**asdict(TRANSPORT_PRESETS[preset]), **(overrides or {})})


class DiffusionModule(LightningModule):
    """Flow-matching training of one diffusion network (see the module docstring).

    Args:
        network: a registered family (``"lightningdit"``, ``"reg"``, see `vfmvae.dit.network_families`);
            ``preset`` a key of that family's presets (``"LightningDiT-XL/1"``, ``"SiT-XL/1-REG"``,
            ``"debug"``); ``network_overrides`` shape fields.
        repa_encoder_depth / repa_projector_dim / repa_z_dim: networks that take them (LightningDiT and the
            text-to-image ``text_dit``): a REPA projector on block ``repa_encoder_depth`` (1-based) predicting
            ``repa_z_dim`` features (beyond the paper).
        transport / transport_overrides: a `vfmvae.transport.TRANSPORT_PRESETS` key and field overrides
            (e.g. ``{"uniform_from_step": 600000}``); its convention must be the network's own.
        lr, betas, weight_decay, adam_eps, fused: AdamW (constant lr); ``fused=None`` = fused on CUDA.
        global_batch_size, micro_batch_size: see the module docstring.
        gradient_clip_norm: max global gradient norm (1.0 for REG, ``None`` for LightningDiT).
        max_consecutive_skips: the non-finite guard's stop (0 = never stop).
        activation_checkpointing, compile_blocks: runtime knobs of the network.
        seed: seed of the per-rank training RNG stream (``seed * world_size + rank``; checkpointed).
    """

    def __init__(
        self,
        network: str = "lightningdit",
        preset: str | None = None,
        network_overrides: dict[str, Any] | None = None,
        repa_encoder_depth: int | None = None,
        repa_projector_dim: int = 2048,
        repa_z_dim: int = 768,
        transport: str = "lightningdit",
        transport_overrides: dict[str, Any] | None = None,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        adam_eps: float = 1e-8,
        fused: bool | None = None,
        global_batch_size: int = 1024,
        micro_batch_size: int | None = None,
        gradient_clip_norm: float | None = None,
        max_consecutive_skips: int = 100,
        activation_checkpointing: bool = False,
        compile_blocks: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.network = network  # the family name (checkpoint metadata); nothing branches on it
        # The same rule rebuilds the network from a checkpoint's hyper-parameters (vfmvae sample).
        self.net = build_from_hparams(self.hparams, activation_checkpointing=activation_checkpointing)
        self.transport = transport_config(transport, transport_overrides)
        native = parse_convention(self.net.time_convention)
        if parse_convention(self.transport.convention) != native:
            raise ValueError(
                f"transport {transport!r} uses time convention {self.transport.convention!r}, but the "
                f"{network} network's weights embed t in {native.value!r}"
            )
        self.objective = DiffusionObjective.from_transport(self.transport)
        self.timestep_sampler = self.objective.timestep_sampler
        if gradient_clip_norm is not None and gradient_clip_norm <= 0:
            raise ValueError(f"gradient_clip_norm must be positive or null, got {gradient_clip_norm}")
        if lr <= 0 or len(betas) != 2:
            raise ValueError(f"need lr > 0 and two betas, got lr={lr}, betas={betas}")
        self.guard = NonFiniteGuard(max_consecutive_skips=max_consecutive_skips)
        self.automatic_optimization = False  # accumulation + guard-skipped steps are ours
        self.plan: BatchPlan | None = None
        self._micro_step = 0  # micro-batches into the current accumulation window
        self._window_unsafe = False
        self._checked_batch = False
        # Times, noise and label dropout come from a per-rank checkpointed stream (exact resume).
        self.rng = RankRNGStream(seed)
        self.last_time_distribution: str | None = None
        self._text_encoders: dict[str, dict[str, Any]] | None = None  # frozen text encoders' weights records
        if compile_blocks:
            for block in self.net.blocks:  # in place: parameter names and state_dict keys unchanged
                block.compile()

    # ------------------------------------------------------------------ setup
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.net.latent_shape)

    def latent_normalizer(self):
        """The training latents' `LatentNormalizer` (for decoding samples), or None without a latent cache."""
        ds = find_latent_dataset(self.trainer.datamodule) if self._trainer is not None else None
        return getattr(ds, "normalizer", None)

    def setup(self, stage: str) -> None:
        # Hash the frozen text encoders once, before FSDP shards or a precision plugin casts the network
        # (setup runs before both); recorded in every checkpoint, checked on resume (`vfmvae.text.weights_record`).
        self._text_encoders = text_encoder_records(self.net)
        if stage != "fit":
            return
        trainer = self.trainer
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "set global_batch_size / micro_batch_size on the model, not trainer.accumulate_grad_batches "
                f"(got {trainer.accumulate_grad_batches}); the model derives accumulation itself"
            )
        hp = self.hparams
        self.plan = BatchPlan.derive(hp.global_batch_size, trainer.world_size, hp.micro_batch_size)
        self.rng.bind(trainer.global_rank, trainer.world_size)
        log.info("diffusion batch plan: %s", self.plan)
        dm = trainer.datamodule
        if dm is not None:
            _set_batch_size(dm, self.plan.micro_batch_size)
            # A DataModule without latents (images mode) has no latent_shape (AttributeError -> None);
            # any other error (an unreadable cache) is real and propagates.
            shape = getattr(dm, "latent_shape", None)
            if shape is not None and tuple(shape) != self.latent_shape:
                raise ValueError(
                    f"the latent cache holds latents of shape {tuple(shape)}, the network takes {self.latent_shape} "
                    "(network_overrides: in_channels / input_size)"
                )
            # Class ids the network has no row for (or its null class) would train silently wrong (a cache method).
            cache, condition = find_latent_dataset(dm), self.net.condition
            if hasattr(cache, "check_labels") and hasattr(condition, "num_classes"):
                cache.check_labels(condition.num_classes, getattr(condition, "null_id", None))

    def configure_model(self) -> None:
        # FSDP2 (configs/trainer/fsdp_bf16.yaml): shard per DiT block; a no-op on one device or under DDP.
        shard_diffusion_network(self)

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.net.parameters() if p.requires_grad]
        fused = hp.fused if hp.fused is not None else all(p.is_cuda for p in params)
        return torch.optim.AdamW(
            params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay, eps=hp.adam_eps, fused=bool(fused)
        )

    # ------------------------------------------------------------------ loss
    def compute_loss(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named loss terms (``total`` first-class) of one batch, from `DiffusionObjective`."""
        x = batch["latent"]
        if x.shape[1:] != self.latent_shape:
            raise ValueError(f"batch latents have shape {tuple(x.shape[1:])}, the network takes {self.latent_shape}")
        step = int(self.global_step)
        self.last_time_distribution = self.timestep_sampler.distribution_at(step)
        condition = self.net.condition.from_batch(batch)
        return self.objective(self.net, x, condition, batch.get("alignment"), step=step)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        plan = self.plan or BatchPlan.derive(self.hparams.global_batch_size, 1, self.hparams.micro_batch_size)
        if not self._checked_batch:
            self._checked_batch = True
            if batch["latent"].shape[0] != plan.micro_batch_size:
                raise ValueError(
                    f"the DataModule gives batches of {batch['latent'].shape[0]}, but the batch plan "
                    f"{plan} needs micro-batches of {plan.micro_batch_size}"
                )
        opt = self.optimizers()
        with self.rng.activate(batch["latent"].device):
            terms = self.compute_loss(batch)
        safe = self.guard.check(terms)  # identical decision on every rank
        self._micro_step += 1
        last = self._micro_step >= plan.accumulation
        if safe:
            if last or not hasattr(self.trainer.strategy, "block_backward_sync"):
                self.manual_backward(terms["total"] / plan.accumulation)
            else:
                with self.trainer.strategy.block_backward_sync():  # no DDP all-reduce inside a window
                    self.manual_backward(terms["total"] / plan.accumulation)
        else:
            self._window_unsafe = True
        if last:
            if not self._window_unsafe:
                if self.hparams.gradient_clip_norm is not None:
                    self.clip_gradients(
                        opt, gradient_clip_val=self.hparams.gradient_clip_norm, gradient_clip_algorithm="norm"
                    )
                opt.step()
            opt.zero_grad(set_to_none=True)
            self._micro_step, self._window_unsafe = 0, False
        self._log_step(terms)
        return terms["total"].detach()

    def _log_step(self, terms: dict[str, torch.Tensor]) -> None:
        scalars = {f"loss/{k}": v.detach().float() for k, v in terms.items()}
        scalars.update({k: torch.tensor(v) for k, v in self.guard.log_dict().items()})
        scalars["train/uniform_time"] = torch.tensor(float(self.last_time_distribution == "uniform"))
        scalars["train/lr"] = torch.tensor(float(self.optimizers().param_groups[0]["lr"]))
        self.log_dict(scalars, on_step=True, on_epoch=False, prog_bar=False, sync_dist=False)
        self.log("loss", terms["total"].detach().float(), on_step=True, prog_bar=True, logger=False)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["diffusion"] = {
            "guard": self.guard.state_dict(),
            "micro_step": self._micro_step,
            "rng": self.rng.state_dict(),  # every rank's stream (collective)
            "network": {
                "family": self.network,
                "latent_shape": list(self.latent_shape),
                "config": to_jsonable(getattr(self.net, "config", None)),
            },
            "transport": to_jsonable(self.transport),
            "batch_plan": to_jsonable(self.plan) if self.plan else None,
            "provenance": _data_provenance(self.trainer.datamodule if self._trainer else None),
        }
        if self._frozen_text_records():
            checkpoint["diffusion"]["provenance"]["text_encoders"] = self._frozen_text_records()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("diffusion")
        if state:
            # A frozen text encoder rebuilt from other weights than the run trained with: refuse (one line).
            check_text_encoders(
                self.net,
                (state.get("provenance") or {}).get("text_encoders"),
                source="the checkpoint being resumed",
                current=self._frozen_text_records(),
            )
            self.guard.load_state_dict(state["guard"])
            self._micro_step = int(state.get("micro_step", 0))
            if "rng" in state:
                self.rng.load_state_dict(state["rng"])

    def _frozen_text_records(self) -> dict[str, dict[str, Any]]:
        if self._text_encoders is None:  # no setup (a bare load_from_checkpoint): the network is not sharded
            self._text_encoders = text_encoder_records(self.net)
        return self._text_encoders

    def network_sha256(self) -> str:
        return state_dict_sha256(self.net)


# ---------------------------------------------------------------------- helpers
def _set_batch_size(dm: Any, micro_batch_size: int) -> None:
    """Give the DataModule the derived per-device batch size (before its loaders are built)."""
    for owner in (dm, getattr(dm, "config", None)):
        if owner is not None and hasattr(owner, "batch_size"):
            if owner.batch_size != micro_batch_size:
                log.info(
                    "setting the DataModule's per-device batch size %s -> %d (from global_batch_size)",
                    owner.batch_size,
                    micro_batch_size,
                )
            owner.batch_size = micro_batch_size
            return
    log.warning("the DataModule exposes no batch_size; its batches must hold %d latents", micro_batch_size)


def _data_provenance(dm: Any) -> dict[str, Any]:
    """Tokenizer record of the latent cache and the latent statistics used (docs/design.md, "Checkpoints,
    resume and provenance")."""
    ds = find_latent_dataset(dm) if dm is not None else None
    if ds is None:
        return {}
    out: dict[str, Any] = {
        "tokenizer": to_jsonable(ds.manifest.get("tokenizer", {})),
        "latent_root": str(getattr(ds, "root", "")),
        "latent_policy": getattr(ds, "policy", None),
    }
    normalizer = getattr(ds, "normalizer", None)
    if normalizer is not None:
        out["latent_stats"] = {k: v.tolist() for k, v in normalizer.stats_dict().items()}
        out["latent_multiplier"] = normalizer.multiplier
    return out
