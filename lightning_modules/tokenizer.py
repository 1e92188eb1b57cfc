"""`TokenizerModule`: one paper stage of VFM-VAE tokenizer training (docs/design.md, "Tokenizer stages and losses").

Numerics live in `vfmvae` (`vfmvae.tokenizer.stage_networks`: the stage's networks and objective;
`vfmvae.tokenizer.training_state`: checkpoint and hand-off helpers). One iteration = **one discriminator update,
then one generator update**, each with its own equivariance draw (as the official loop), two Adam optimisers.

- **One step = one iteration = `global_batch_size` images** (docs/design.md, "Image counters and schedules"):
  `trainer.global_step` counts G steps (D is stepped on the unwrapped optimiser). A skipped (unsafe) step
  still counts, with `None` gradients: Adam leaves weights and state untouched. `global_nimg` spans all stages,
  `stage_nimg` this one; both are checkpointed, so a resumed run equals an uninterrupted one.
- **EMA** (docs/design.md, "EMA"): the module adds `callbacks.ema.EMACallback` itself (`configure_callbacks`,
  over `ema_modules()`); validation and the export use its weights.
- **DDP**: the module averages the gradients of exactly the stepped parameters (one flat all-reduce per
  phase, as the official loop); DDP's reducer stays off. Each rank has its own streams (`seed * world +
  rank`): the step's torch stream (`RankRNGStream`) and the equivariance sampler; checkpoints hold every
  rank's, so a resume on the same world size is exact on every rank. `16-mixed` is refused.
- **Checkpoints** leave the frozen VFM, DINO ViT and VGG out (rebuilt each run, checked by hash on load);
  the module's state is `checkpoint["tokenizer_training"]`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from callbacks.ema import EMACallback, find_ema, find_ema_callback
from datamodules.batch_size import set_per_device_batch_size
from lightning_modules.parallel import refuse_sharded_strategy
from vfmvae.codec import uint8_to_unit
from vfmvae.metrics.reconstruction import ReconstructionMetrics
from vfmvae.tokenizer.conditioning import batch_images01
from vfmvae.tokenizer.handoff import merge_ema_state, read_previous_stage
from vfmvae.tokenizer.stage_networks import build_stage_networks
from vfmvae.tokenizer.stages import TokenizerStepRule, get_stage
from vfmvae.tokenizer.training_state import (
    check_resume_record,
    drop_frozen_keys,
    export_provenance,
    fill_frozen_keys,
    format_metrics,
    frozen_hashes,
    move_legacy_ema,
    restore_training_record,
    summary_line,
    training_record,
    write_fit_summary,
)
from vfmvae.utils.distributed import all_reduce_gradients, grad_norm
from vfmvae.utils.ema import EMA, EMAConfig
from vfmvae.utils.guard import NonFiniteGuard
from vfmvae.utils.rng import RankRNGStream

log = logging.getLogger(__name__)
STATE_KEY = "tokenizer_training"


class TokenizerModule(LightningModule):
    """One tokenizer stage (see the module docstring).

    Args:
        stage: 0, 1, 2 or 3 (the paper's stages); picks the trainable modules, default lr and loss preset.
        tokenizer / tokenizer_overrides: `vfmvae.tokenizer` preset and field overrides.
        vfm_pretrained: local folder/file of the frozen VFM (None = random init from `seed`: tests/demo).
        vfm_config: VFM config overrides (e.g. `{"compute_dtype": "float32"}` on CPU).
        text_pretrained / text_tokenizer: conditional decoders (docs/conditional.md): local folders of the SigLIP2
            text tower and its Hugging Face tokenizer (default: `vfm_pretrained`, which holds both).
        loss_overrides: `TokenizerLossConfig` scalar field overrides (e.g. `{"lpips": 0.0}`).
        equivariance: `EQUIVARIANCE_PRESETS` key replacing the stage's (e.g. "debug" at 64 px).
        discriminator / dino_pretrained: projected-D preset and local DINO ViT-S/16 weights.
        patchgan: PatchGAN preset (stage 3).
        vgg_path: local torchvision VGG16 weights for LPIPS; `lpips_random_backbone` for tests only.
        global_batch_size: images per iteration over all ranks (the DataModule batch is set from it).
        lr: Adam lr of both optimisers (default: the stage's, 1e-4 / 1e-4 / 5e-5 / 5e-5).
        ema_halflife_nimg / ema_rampup: EMA half-life (images) and ramp-up (paper: 160k, 0.05).
        init_checkpoint: previous stage's Lightning checkpoint (weights, EMA, global image counter).
        init_keep_optimizers: also take its optimiser states (needs the same trainable set).
        init_strict: unexplained missing/unexpected keys at the hand-off are an error.
        max_consecutive_skips: stop after this many unsafe steps in a row (0 = never).
        seed: seed of random frozen networks, initial weights, EQ and step RNG (per rank: seed*world+rank).
        val_inception_path: torch-fidelity inception weights for rFID/rIS in validation (None = skip).
        export_dir: write the EMA tokenizer with `save_pretrained` here at the end of `fit`.
        cpu_threads: `torch.set_num_threads` for CPU runs (tiny models on a shared 2-core machine run
            ~8x faster with 1 thread than with oversubscribed intra-op threads).
        allow_random_frozen: accept randomly initialised full-size frozen networks (VFM / DINO) when no
            weights path is given; otherwise that is an error (only `debug*` presets may be random).
    """

    def __init__(
        self,
        stage: int = 0,
        tokenizer: str = "vfmvae-f16d32-siglip2",
        tokenizer_overrides: dict[str, Any] | None = None,
        vfm_pretrained: str | None = None,
        vfm_config: dict[str, Any] | None = None,
        text_pretrained: str | None = None,
        text_tokenizer: str | None = None,
        loss_overrides: dict[str, Any] | None = None,
        equivariance: str | None = None,
        discriminator: str = "dino-vits16",
        dino_pretrained: str | None = None,
        patchgan: str = "pix2pixhd",
        vgg_path: str | None = None,
        lpips_random_backbone: bool = False,
        global_batch_size: int = 512,
        lr: float | None = None,
        betas: tuple[float, float] = (0.0, 0.99),
        adam_eps: float = 1e-8,
        ema_halflife_nimg: float = 160_000.0,
        ema_rampup: float | None = 0.05,
        init_checkpoint: str | None = None,
        init_keep_optimizers: bool = False,
        init_strict: bool = True,
        max_consecutive_skips: int = 100,
        seed: int = 42,
        val_inception_path: str | None = None,
        export_dir: str | None = None,
        cpu_threads: int | None = None,
        allow_random_frozen: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stage = int(stage)
        self.spec = get_stage(self.stage)
        nets = build_stage_networks(self.stage, self.hparams)
        # Registered in this order (state-dict and optimiser order): tokenizer, projected D, PatchGAN, LPIPS.
        self.tokenizer = nets.tokenizer
        self.projected_d = nets.projected_d
        self.patchgan = nets.patchgan
        self.lpips = nets.lpips
        self.loss_config, self.g_modules, self.objective = nets.loss_config, nets.g_modules, nets.objective
        self.conditioner = nets.conditioner  # batch -> decoder condition of a conditional tokenizer, else None
        self.guard_g = NonFiniteGuard(max_consecutive_skips, rule=TokenizerStepRule("G"))
        self.guard_d = NonFiniteGuard(max_consecutive_skips, rule=TokenizerStepRule("D"))
        self.rng = RankRNGStream(seed)
        self.global_nimg = 0
        self.stage_nimg = 0
        self.global_batch_size = int(global_batch_size)
        self.automatic_optimization = False
        self.handoff_report = None
        self.val_history: list[dict[str, float]] = []
        self.initial_val: dict[str, float] | None = None
        self._val_metrics: ReconstructionMetrics | None = None
        self._inception = None
        self._frozen_hashes: dict[str, str] | None = None
        self._pending_optimizer_states: list[dict] | None = None
        self._handoff_ema: dict[str, Any] | None = None
        self._fit_start_time: float | None = None

    # ------------------------------------------------------------------ parameters and EMA
    @property
    def g_params(self) -> list[torch.nn.Parameter]:
        return [p for m in self.g_modules.values() for p in m.parameters()]

    @property
    def d_params(self) -> list[torch.nn.Parameter]:
        params = list(self.projected_d.trainable_parameters()) if self.projected_d is not None else []
        if self.patchgan is not None:
            params += list(self.patchgan.parameters())
        return params

    def configure_callbacks(self) -> list[EMACallback]:
        hp = self.hparams
        return [
            EMACallback(config=EMAConfig(mode="halflife", halflife_nimg=hp.ema_halflife_nimg, rampup=hp.ema_rampup))
        ]

    def ema_modules(self) -> dict[str, torch.nn.Module]:
        """What `EMACallback` averages: the stage's trainable generator modules (never the VFM or a D)."""
        return self.g_modules

    @property
    def ema(self) -> EMA | None:
        """The run's EMA (owned by the `EMACallback` this module adds; ``None`` outside a fit)."""
        return find_ema(self.trainer) if self._trainer is not None else None

    def _ema(self) -> EMA:
        if self.ema is None:
            raise RuntimeError(
                "the tokenizer's EMA lives in the EMACallback of a fit (TokenizerModule.configure_callbacks)"
            )
        return self.ema

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if self.hparams.cpu_threads and self.device.type == "cpu":
            torch.set_num_threads(int(self.hparams.cpu_threads))
        if stage != "fit":
            return
        trainer = self.trainer
        precision = str(trainer.precision)
        if precision.startswith("16"):
            raise ValueError(
                f"precision {precision!r} (GradScaler) is not supported by the two-optimiser GAN step; "
                "use bf16-mixed or 32-true"
            )
        # DDP-only (docs/scale.md): FSDP/DeepSpeed would shard a ~50M-parameter decoder for no gain.
        refuse_sharded_strategy(trainer, "TokenizerModule", "its GAN step averages its own gradients; DDP-only")
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "the tokenizer step does not accumulate: set trainer.accumulate_grad_batches to 1 "
                "and choose model.global_batch_size"
            )
        world, rank = trainer.world_size, trainer.global_rank
        if self.global_batch_size % world:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not divisible by the world size {world}")
        hint = "(make: DATA_ROOT); the CPU demo needs no files: CONFIG=configs/tokenizer/demo.yaml make train-tokenizer"
        set_per_device_batch_size(
            trainer.datamodule, self.global_batch_size // world, self.global_batch_size, world, hint
        )
        self.objective.sampler.rng.seed(self.hparams.seed * world + rank)  # official per-rank seeding
        self.rng.bind(rank, world)  # seed * world + rank, unless a checkpoint restores it
        if self.hparams.init_checkpoint and trainer.ckpt_path is None:
            self.load_previous_stage(
                self.hparams.init_checkpoint, self.hparams.init_keep_optimizers, self.hparams.init_strict
            )

    def configure_optimizers(self):
        hp = self.hparams
        kw = dict(lr=hp.lr if hp.lr is not None else self.spec.lr, betas=tuple(hp.betas), eps=hp.adam_eps)
        opt_g = torch.optim.Adam(self.g_params, **kw)
        if not self.d_params:
            raise ValueError("no discriminator is active in this stage; the tokenizer GAN step needs one")
        return [opt_g, torch.optim.Adam(self.d_params, **kw)]

    def on_fit_start(self) -> None:
        # EMACallback.on_fit_start (callbacks run first) has built the EMA: carry the previous stage's over.
        if self._handoff_ema is not None:
            ema = self._ema()
            ema.load_state_dict(merge_ema_state(self._handoff_ema, ema.state_dict(), self.handoff_report))
            self._handoff_ema = None
        if self.handoff_report is not None:
            log.warning("%s", self.handoff_report.summary())

    def on_train_start(self) -> None:
        if self._pending_optimizer_states is not None:
            for opt, state in zip(self.optimizers(), self._pending_optimizer_states):
                opt.optimizer.load_state_dict(state)
            self._pending_optimizer_states = None
        self._fit_start_time = time.time()

    # ------------------------------------------------------------------ stage hand-off
    def load_previous_stage(self, path: str, keep_optimizers: bool = False, strict: bool = True):
        """Weights, EMA (merged in `on_fit_start`) and the global image counter of the previous stage."""
        handoff = read_previous_stage(
            path, self, self._hashes(), STATE_KEY, self.spec.train_mode, strict=strict, keep_optimizers=keep_optimizers
        )
        self.load_state_dict(handoff.state, strict=False)
        self._handoff_ema, self._pending_optimizer_states = handoff.ema, handoff.optimizer_states
        self.global_nimg, self.stage_nimg = handoff.report.global_nimg, 0
        self.handoff_report = handoff.report
        return handoff.report

    # ------------------------------------------------------------------ training
    def _phase_step(self, optimizer, loss, terms, guard, params, name: str) -> torch.Tensor:
        """Guard, backward, grad sync and step of one phase; returns the gradient norm."""
        guard.rule.set_run_nimg(self.stage_nimg)
        ok = guard.check({**terms, f"total_{name}": loss.detach()})
        for p in params:
            p.grad = None
        if ok:
            self.manual_backward(loss)
            all_reduce_gradients(params, self.trainer.world_size)
        norm = grad_norm(params)
        optimizer.step()  # unsafe: every grad is None, so Adam changes neither weights nor state
        return norm

    def _toggle_d(self, trainable: bool) -> None:
        for p in self.d_params:
            p.requires_grad_(trainable)

    def _disable_ddp_reducer(self) -> None:
        """Gradients are averaged by `all_reduce_gradients`, so DDP's reducer must stay idle.

        Lightning re-enables `require_backward_grad_sync` after every outer DDP forward (its manual-
        optimisation redirection), and `manual_backward` would then arm the reducer for *all*
        parameters; with two backward passes over disjoint sets that fails. Inside the step it is off.
        """
        from torch.nn.parallel import DistributedDataParallel

        wrapped = self.trainer.strategy.model
        if isinstance(wrapped, DistributedDataParallel):
            wrapped.require_backward_grad_sync = False

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._disable_ddp_reducer()
        images, cond = batch_images01(batch), self.condition(batch)
        opt_g, opt_d = self.optimizers()
        with self.rng.activate(images.device):
            self._toggle_d(True)
            d = self.objective.discriminator_phase(self.tokenizer, images, condition=cond)
            d_norm = self._phase_step(opt_d.optimizer, d.total, d.terms, self.guard_d, self.d_params, "D")
            self._toggle_d(False)  # G phase: gradients reach the fake image through D, not D's weights
            g = self.objective.generator_phase(self.tokenizer, images, self.global_nimg, condition=cond)
            g_norm = self._phase_step(opt_g, g.total, g.terms, self.guard_g, self.g_params, "G")
            self._toggle_d(True)
        self.global_nimg += self.global_batch_size
        self.stage_nimg += self.global_batch_size
        values = {**d.scalars("loss/D"), **g.scalars("loss/G")}
        values.update(
            {
                "train/grad_norm_D": d_norm,
                "train/grad_norm_G": g_norm,
                "train/skipped_D": float(self.guard_d.num_skipped),
                "train/skipped_G": float(self.guard_g.num_skipped),
                "train/global_kimg": self.global_nimg / 1000.0,
                "train/stage_kimg": self.stage_nimg / 1000.0,
            }
        )
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=self.global_batch_size)

    # ------------------------------------------------------------------ validation (EMA weights, swapped in by EMACallback)
    def on_validation_start(self) -> None:
        if self._inception is None and self.hparams.val_inception_path:
            from vfmvae.metrics.inception import AdmInceptionFeatures

            self._inception = AdmInceptionFeatures(self.hparams.val_inception_path).to(self.device)
        # Validation rounds decoder outputs to the nearest level, as it always has (the evaluation protocol
        # truncates: vfmvae eval-reconstruction); kept so that logged metric/* stay comparable.
        self._val_metrics = ReconstructionMetrics(self.lpips, self._inception, uint8_mode="round")

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        if images.dtype != torch.uint8:
            raise TypeError("validation batches must hold uint8 images (as the data module yields)")
        gen = torch.Generator(device=images.device).manual_seed(self.hparams.seed * 100_003 + batch_idx)
        recon = self.reconstruct(uint8_to_unit(images), generator=gen, condition=self.condition(batch))
        self._val_metrics.update_decoded(images, recon)

    def condition(self, batch: dict[str, Any] | torch.Tensor) -> dict[str, Any]:
        """Decoder condition kwargs of a conditional tokenizer (`text=` / `class_labels=`); {} otherwise."""
        return {} if self.conditioner is None else self.conditioner(self.tokenizer, batch, self.device)

    @torch.no_grad()
    def reconstruct(self, images01, generator=None, return_multiscale: bool = False, condition=None):
        """Sampled-latent reconstruction (latents are sampled, never the mean), in [-1, 1]; a conditional
        tokenizer needs `condition` (from `self.condition(batch)`)."""
        posterior = self.tokenizer.encode(images01)
        z = posterior.sample(generator=generator)
        out = self.tokenizer.decode(z, return_multiscale=True, **(condition or {}))
        return out if return_multiscale else out.image

    def on_validation_epoch_end(self) -> None:
        metrics = self._val_metrics.compute()
        if self.trainer.sanity_checking:
            if self.initial_val is None:  # a resumed run keeps its original baseline
                self.initial_val = metrics  # the untrained (or hand-off) model: baseline of the gains
            rank_zero_info(f"held-out reconstruction before training: {format_metrics(metrics)}")
            return
        self.val_history.append({**metrics, "global_nimg": self.global_nimg, "step": int(self.global_step)})
        logged = {f"metric/{k}": float(v) for k, v in metrics.items() if k != "num_images"}
        if self.initial_val is not None:
            logged["metric/psnr_gain_db"] = metrics["psnr"] - self.initial_val["psnr"]
        self.log_dict(logged, sync_dist=True)

    # ------------------------------------------------------------------ end of fit
    def on_fit_end(self) -> None:
        log_dir = Path(self.trainer.log_dir or ".")  # a collective under DDP: every rank asks
        if self.trainer.global_rank != 0:
            return
        wall = None if self._fit_start_time is None else round(time.time() - self._fit_start_time, 1)
        rank_zero_info(summary_line(write_fit_summary(self, log_dir, wall)))
        if self.hparams.export_dir:
            self.export(self.hparams.export_dir)

    def export(self, directory: str) -> dict:
        """`save_pretrained` of the EMA tokenizer with the training provenance."""
        with self._ema().swap():
            return self.tokenizer.save_pretrained(directory, weights="ema", provenance=export_provenance(self))

    # ------------------------------------------------------------------ checkpoints
    def _hashes(self) -> dict[str, str]:
        if self._frozen_hashes is None:
            self._frozen_hashes = frozen_hashes(self)
        return self._frozen_hashes

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called on every rank: the random streams of all ranks are gathered (collectives).
        frozen = drop_frozen_keys(checkpoint["state_dict"], self._hashes())
        checkpoint[STATE_KEY] = {**training_record(self), "frozen": frozen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume: fill the frozen networks back in (strict loading stays on for the rest), restore state."""
        extra = check_resume_record(checkpoint.get(STATE_KEY), self.stage, STATE_KEY)
        fill_frozen_keys(checkpoint["state_dict"], self, extra.get("frozen"), self._hashes())
        ema_cb = find_ema_callback(self.trainer) if self._trainer is not None else None
        if ema_cb is not None:  # a checkpoint written before the redesign holds the EMA in `extra`
            move_legacy_ema(checkpoint, STATE_KEY, ema_cb.state_key)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self._trainer is not None else (1, 0)
        restore_training_record(self, extra, world, rank, self.hparams.seed)


__all__ = ["TokenizerModule"]
