"""`TokenizerModule`: one paper stage of VFM-VAE tokenizer training (tokenizer spec §4.6, §5, §8).

Numerics live in `vfmvae` (`VFMVAE`, `vfmvae.losses.TokenizerObjective`, discriminators, EMA, guard);
this module orchestrates one iteration = **one discriminator update, then one generator update**,
each with its own equivariance draw (as the official loop), with two Adam optimisers
(betas (0, 0.99), eps 1e-8, no schedule, no weight decay).

Counting (what `max_steps`, `log_every_n_steps`, `val_check_interval` and checkpoint intervals mean):
- **one step = one iteration = one D update + one G update = `global_batch_size` images.**
  `trainer.global_step` counts G optimiser steps only: the D optimiser is stepped directly on the
  wrapped torch optimiser, so Lightning does not count it (two counted optimisers would make
  `max_steps` half the iterations). A skipped (unsafe) step still counts: its gradients are
  dropped (`None`), so Adam leaves the parameters *and* its state untouched.
- Image counters: `global_nimg` (all stages; multi-scale loss window, EMA ramp-up; carried over at
  the stage hand-off) and `stage_nimg` (this stage; safe-loss warm-up of 50k images). Both are
  checkpointed. The official warm-up restarts on every resume (`resume_kimg`); ours counts from
  the stage start so that a resumed run equals an uninterrupted one.
- The stage configs give `max_steps = ceil(stage images / global batch)` (20 M / 512 -> 39,063).

Per iteration: D phase (tokenizer forward without grad, hinge [+ LSGAN] D loss, guard, backward,
grad sync, D step); G phase (D frozen, the stage's reconstruction/KL/VF/GAN terms with the adaptive
VF weight, guard, backward, sync, G step); EMA update (half-life 160k images with ramp-up over the
stage's trainable generator modules; `vfmvae.utils.ema`); counters.

Distributed (DDP): the module averages gradients itself with one flat all-reduce per phase over
exactly the parameters that phase steps (zeros for parameters a rank did not touch), as the
official loop does, and turns DDP's reducer off (`require_backward_grad_sync = False`). That is the
correct treatment of a GAN iteration with two backward passes through disjoint parameter sets in
one `training_step`; DDP's unused-parameter search is neither needed nor used
(`find_unused_parameters: false` in `configs/trainer/ddp_bf16.yaml`). `16-mixed` (GradScaler) is
refused; use `bf16-mixed` or `32-true`.

Checkpoints: the frozen VFM, the discriminator's DINO ViT and LPIPS' VGG are **not** stored
(1.2 GB for SigLIP2-L); they are rebuilt from their files each run and checked by hash on load
(`lightning_modules/tokenizer_state.py`). The module's own state (counters, EMA, guards, EQ and
step RNG streams) is saved under `checkpoint["tokenizer_training"]`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from lightning_modules.parallel import refuse_sharded_strategy
from lightning_modules.tokenizer_stages import TokenizerStepRule, get_stage, set_trainable
from lightning_modules.tokenizer_state import (
    RNGStream,
    compare_state_dicts,
    drop_frozen_keys,
    fill_frozen_keys,
    frozen_hashes,
    merge_ema_state,
)
from vfmvae.losses import EQUIVARIANCE_PRESETS, LPIPS, TokenizerObjective, get_loss_config
from vfmvae.tokenizer import VFMVAE, get_config
from vfmvae.tokenizer.discriminators import (
    PATCHGAN_PRESETS,
    PROJECTED_DISCRIMINATOR_PRESETS,
    MultiScalePatchGAN,
    ProjectedDiscriminator,
)
from vfmvae.tokenizer.reconstruction_metrics import ReconstructionMetrics, to_uint8
from vfmvae.utils.distributed import all_reduce_gradients, grad_norm
from vfmvae.utils.ema import EMA, EMAConfig
from vfmvae.utils.guard import NonFiniteGuard
from vfmvae.vfm import build_vfm

log = logging.getLogger(__name__)
STATE_KEY = "tokenizer_training"


class TokenizerModule(LightningModule):
    """One tokenizer stage (see the module docstring).

    Args:
        stage: 0, 1, 2 or 3 (spec §5); picks the trainable modules, default lr and loss preset.
        tokenizer / tokenizer_overrides: `vfmvae.tokenizer` preset and field overrides.
        vfm_pretrained: local folder/file of the frozen VFM (None = random init from `seed`: tests/demo).
        vfm_config: VFM config overrides (e.g. `{"compute_dtype": "float32"}` on CPU).
        loss_overrides: `TokenizerLossConfig` scalar field overrides (e.g. `{"lpips": 0.0}`).
        equivariance: `EQUIVARIANCE_PRESETS` key replacing the stage's (e.g. "debug" at 64 px).
        discriminator / dino_pretrained: projected-D preset and local DINO ViT-S/16 weights.
        patchgan: PatchGAN preset (stage 3).
        vgg_path: local torchvision VGG16 weights for LPIPS; `lpips_random_backbone` for tests only.
        global_batch_size: images per iteration over all ranks (the DataModule batch is set from it).
        lr: Adam lr of both optimisers (default: the stage's, 1e-4 / 1e-4 / 5e-5 / 5e-5).
        ema_halflife_nimg / ema_rampup: EMA half-life (images) and ramp-up (paper 160k, 0.05).
        init_checkpoint: previous stage's Lightning checkpoint (weights, EMA, global image counter).
        init_keep_optimizers: also take its optimiser states (needs the same trainable set).
        init_strict: unexplained missing/unexpected keys at the hand-off are an error.
        max_consecutive_skips: stop after this many unsafe steps in a row (0 = never).
        seed: seed of random frozen networks, initial weights, EQ and step RNG (per rank: seed*world+rank).
        val_inception_path: torch-fidelity inception weights for rFID/rIS in validation (None = skip).
        export_dir: write the EMA tokenizer with `save_pretrained` here at the end of `fit`.
        allow_random_frozen: accept randomly initialised full-size frozen networks (VFM / DINO) when no
            weights path is given; otherwise that is an error (only `debug*` presets may be random).
        cpu_threads: `torch.set_num_threads` for CPU runs (tiny models on a shared 2-core machine run
            ~8x faster with 1 thread than with oversubscribed intra-op threads).
    """

    def __init__(
        self,
        stage: int = 0,
        tokenizer: str = "vfmvae-f16d32-siglip2",
        tokenizer_overrides: dict[str, Any] | None = None,
        vfm_pretrained: str | None = None,
        vfm_config: dict[str, Any] | None = None,
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
        self.loss_config = self._loss_config(loss_overrides, equivariance)
        cfg = get_config(tokenizer, **(tokenizer_overrides or {}))
        cfg = replace(cfg, use_vf_projection=self.spec.uses_vf_projection and self.loss_config.vf_base > 0)
        if not allow_random_frozen:
            _require_weights("VFM", cfg.vfm_name, vfm_pretrained, "model.vfm_pretrained (make: VFM_PATH)")
            if self.loss_config.stylegan_t > 0:
                _require_weights(
                    "discriminator DINO ViT", discriminator, dino_pretrained, "model.dino_pretrained (make: DINO_PATH)"
                )
        # Each network is built from its own seed, so a random frozen network (tests, demo) is the
        # same in every run and every stage, whatever else the stage builds.
        self.tokenizer = _seeded(
            seed,
            lambda: VFMVAE(
                cfg, vfm=_seeded(seed, lambda: build_vfm(cfg.vfm_name, pretrained=vfm_pretrained, config=vfm_config))
            ),
        )
        self.projected_d = _seeded(seed + 1, lambda: self._build_projected_d(discriminator, dino_pretrained))
        self.patchgan = (
            _seeded(seed + 2, lambda: MultiScalePatchGAN(PATCHGAN_PRESETS[patchgan])) if (self._uses_patchgan) else None
        )
        self.lpips = (
            _seeded(seed + 3, lambda: LPIPS(vgg_path, random_backbone=lpips_random_backbone))
            if (self.loss_config.lpips > 0 or vgg_path or lpips_random_backbone)
            else None
        )
        self.tokenizer.vfm_pretrained = vfm_pretrained  # recorded by save_pretrained
        self.g_modules = {f"tokenizer.{k}": m for k, m in set_trainable(self.tokenizer, self.stage).items()}
        self.objective = TokenizerObjective(
            self.loss_config,
            cfg.img_resolution,
            lpips=self.lpips,
            projected_d=self.projected_d,
            patchgan=self.patchgan,
            seed=seed,
        )
        self.ema = EMA(self.g_modules, EMAConfig(mode="halflife", halflife_nimg=ema_halflife_nimg, rampup=ema_rampup))
        self.guard_g = NonFiniteGuard(max_consecutive_skips, rule=TokenizerStepRule("G"))
        self.guard_d = NonFiniteGuard(max_consecutive_skips, rule=TokenizerStepRule("D"))
        self.rng = RNGStream(seed)
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
        self._fit_start_time: float | None = None

    # ------------------------------------------------------------------ construction
    def _loss_config(self, overrides: dict[str, Any] | None, equivariance: str | None):
        overrides = dict(overrides or {})
        if equivariance is not None:
            if equivariance not in EQUIVARIANCE_PRESETS:
                raise ValueError(
                    f"unknown equivariance preset {equivariance!r}; choose one of {sorted(EQUIVARIANCE_PRESETS)}"
                )
            overrides["equivariance"] = EQUIVARIANCE_PRESETS[equivariance]
        try:
            return get_loss_config(self.spec.loss_preset, **overrides)
        except TypeError as e:
            raise ValueError(f"loss_overrides {sorted(overrides)}: {e}") from e

    @property
    def _uses_patchgan(self) -> bool:
        return self.loss_config.patchgan > 0 or self.loss_config.feature_matching > 0

    def _build_projected_d(self, preset: str, weights: str | None) -> ProjectedDiscriminator | None:
        if self.loss_config.stylegan_t <= 0:
            return None
        if preset not in PROJECTED_DISCRIMINATOR_PRESETS:
            raise ValueError(
                f"unknown discriminator preset {preset!r}; choose one of {sorted(PROJECTED_DISCRIMINATOR_PRESETS)}"
            )
        return ProjectedDiscriminator(PROJECTED_DISCRIMINATOR_PRESETS[preset], vit_weights_path=weights)

    @property
    def g_params(self) -> list[torch.nn.Parameter]:
        return [p for m in self.g_modules.values() for p in m.parameters()]

    @property
    def d_params(self) -> list[torch.nn.Parameter]:
        params = list(self.projected_d.trainable_parameters()) if self.projected_d is not None else []
        if self.patchgan is not None:
            params += list(self.patchgan.parameters())
        return params

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
        # DDP-only (docs/scale.md §1): FSDP/DeepSpeed would shard a ~50M-parameter decoder for no gain.
        refuse_sharded_strategy(trainer, "TokenizerModule", "its GAN step averages its own gradients; DDP-only")
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "the tokenizer step does not accumulate: set trainer.accumulate_grad_batches to 1 "
                "and choose model.global_batch_size"
            )
        world, rank = trainer.world_size, trainer.global_rank
        if self.global_batch_size % world:
            raise ValueError(f"global_batch_size {self.global_batch_size} is not divisible by the world size {world}")
        per_device = self.global_batch_size // world
        dm = trainer.datamodule
        owner = getattr(dm, "config", dm)
        if owner is not None and hasattr(owner, "root") and owner.root is None:
            raise ValueError(
                "the data root is not set: data.init_args.config.root (make: DATA_ROOT); "
                "the CPU demo needs no files: CONFIG=configs/tokenizer/demo.yaml make train-tokenizer"
            )
        if owner is not None and hasattr(owner, "batch_size"):
            if owner.batch_size != per_device:
                log.info(
                    "per-device batch size %s -> %d (global_batch_size %d / %d ranks)",
                    owner.batch_size,
                    per_device,
                    self.global_batch_size,
                    world,
                )
            owner.batch_size = per_device
        seed = self.hparams.seed * world + rank  # official per-rank seeding
        self.objective.sampler.rng.seed(seed)
        self.rng = RNGStream(seed)
        if self.hparams.init_checkpoint and trainer.ckpt_path is None:
            self.load_previous_stage(
                self.hparams.init_checkpoint, self.hparams.init_keep_optimizers, self.hparams.init_strict
            )

    def configure_optimizers(self):
        hp = self.hparams
        lr = hp.lr if hp.lr is not None else self.spec.lr
        kw = dict(lr=lr, betas=tuple(hp.betas), eps=hp.adam_eps)
        opt_g = torch.optim.Adam(self.g_params, **kw)
        if not self.d_params:
            raise ValueError("no discriminator is active in this stage; the tokenizer GAN step needs one")
        opt_d = torch.optim.Adam(self.d_params, **kw)
        return [opt_g, opt_d]

    def on_train_start(self) -> None:
        if self._pending_optimizer_states is not None:
            for opt, state in zip(self.optimizers(), self._pending_optimizer_states):
                opt.optimizer.load_state_dict(state)
            self._pending_optimizer_states = None
        self._fit_start_time = time.time()

    # ------------------------------------------------------------------ stage hand-off
    def load_previous_stage(self, path: str, keep_optimizers: bool = False, strict: bool = True):
        """Weights, EMA and the global image counter of the previous stage (see `tokenizer_state.py`)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if "state_dict" not in ckpt:
            raise ValueError(f"{path} is not a Lightning checkpoint of TokenizerModule (no 'state_dict')")
        state = dict(ckpt["state_dict"])
        extra = ckpt.get(STATE_KEY, {})
        fill_frozen_keys(state, self, extra.get("frozen"), self._hashes())
        report = compare_state_dicts(self.state_dict().keys(), state.keys(), str(path))
        report.previous_stage = extra.get("stage")
        report.global_nimg = int(extra.get("global_nimg", 0))
        if report.unexplained and strict:
            raise KeyError(
                f"stage hand-off: unexplained key differences (init_strict=False to accept):\n{report.summary()}"
            )
        own = self.state_dict()
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        if "ema" in extra:
            self.ema.load_state_dict(merge_ema_state(extra["ema"], self.ema.state_dict(), report))
        self.global_nimg, self.stage_nimg = report.global_nimg, 0
        if keep_optimizers:
            if extra.get("stage") is not None and get_stage(extra["stage"]).train_mode != self.spec.train_mode:
                raise ValueError(
                    f"init_keep_optimizers: stage {extra['stage']} trained a different parameter set "
                    f"({get_stage(extra['stage']).train_mode} vs {self.spec.train_mode})"
                )
            self._pending_optimizer_states = ckpt["optimizer_states"]
            report.optimizers_kept = True
        self.handoff_report = report
        log.warning("%s", report.summary())
        return report

    # ------------------------------------------------------------------ training
    def _phase_step(self, optimizer, loss, terms, guard, params, name: str) -> tuple[bool, torch.Tensor]:
        """Guard, backward, grad sync and step of one phase; returns (taken, grad norm)."""
        rule = guard.rule
        rule.set_run_nimg(self.stage_nimg)
        checked = dict(terms)
        checked[f"total_{name}"] = loss.detach()
        ok = guard.check(checked)
        for p in params:
            p.grad = None
        if ok:
            self.manual_backward(loss)
            all_reduce_gradients(params, self.trainer.world_size)
        norm = grad_norm(params)
        # Unsafe: every grad is None, so Adam skips every parameter (no weight or state change).
        optimizer.step()
        return ok, norm

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
        images = self._images01(batch)
        opt_g, opt_d = self.optimizers()
        with self.rng.activate(images.device):
            self._toggle_d(True)
            d = self.objective.discriminator_phase(self.tokenizer, images)
            d_ok, d_norm = self._phase_step(opt_d.optimizer, d.total, d.terms, self.guard_d, self.d_params, "D")
            self._toggle_d(False)  # G phase: gradients reach the fake image through D, not D's weights
            g = self.objective.generator_phase(self.tokenizer, images, self.global_nimg)
            g_ok, g_norm = self._phase_step(opt_g, g.total, g.terms, self.guard_g, self.g_params, "G")
            self._toggle_d(True)
        beta = self.ema.update(batch_size=self.global_batch_size, cur_nimg=self.global_nimg)
        self.global_nimg += self.global_batch_size
        self.stage_nimg += self.global_batch_size
        self._log_step(d, g, d_norm, g_norm, beta)

    def _images01(self, batch: dict[str, Any]) -> torch.Tensor:
        images = batch["image"] if isinstance(batch, dict) else batch
        if images.dtype == torch.uint8:
            return images.float() / 255.0
        if not images.is_floating_point():
            raise TypeError(f"tokenizer batches must be uint8 or float images in [0, 1], got {images.dtype}")
        return images

    def _log_step(self, d, g, d_norm, g_norm, beta: float) -> None:
        values: dict[str, Any] = {f"loss/D/{k}": v.detach().float() for k, v in d.terms.items() if v.numel() == 1}
        values.update({f"loss/G/{k}": v.detach().float() for k, v in g.terms.items() if v.numel() == 1})
        values.update(
            {
                "loss/D/total": d.total.detach().float(),
                "loss/G/total": g.total.detach().float(),
                "train/grad_norm_D": d_norm,
                "train/grad_norm_G": g_norm,
                "train/skipped_D": float(self.guard_d.num_skipped),
                "train/skipped_G": float(self.guard_g.num_skipped),
                "train/global_kimg": self.global_nimg / 1000.0,
                "train/stage_kimg": self.stage_nimg / 1000.0,
                "train/ema_beta": beta,
            }
        )
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=self.global_batch_size)
        if "train/G/vf_weight" in values:
            self.log("train/vf_weight", values["train/G/vf_weight"], on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ validation (EMA weights)
    def on_validation_start(self) -> None:
        if not self.ema.swapped:
            self.ema.swap_in()
        if self._inception is None and self.hparams.val_inception_path:
            from vfmvae.metrics.inception import AdmInceptionFeatures

            self._inception = AdmInceptionFeatures(self.hparams.val_inception_path).to(self.device)
        self._val_metrics = ReconstructionMetrics(self.lpips, self._inception)

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = batch["image"]
        if images.dtype != torch.uint8:
            raise TypeError("validation batches must hold uint8 images (as the data module yields)")
        gen = torch.Generator(device=images.device).manual_seed(self.hparams.seed * 100_003 + batch_idx)
        recon = self.reconstruct(images.float() / 255.0, generator=gen)
        self._val_metrics.update(images, to_uint8(recon))

    @torch.no_grad()
    def reconstruct(
        self, images01: torch.Tensor, generator: torch.Generator | None = None, return_multiscale: bool = False
    ):
        """Sampled-latent reconstruction (spec §6: latents are sampled, never the mean); [-1, 1]."""
        posterior = self.tokenizer.encode(images01)
        out = self.tokenizer.decode(posterior.sample(generator=generator), return_multiscale=True)
        return out if return_multiscale else out.image

    def on_validation_epoch_end(self) -> None:
        metrics = self._val_metrics.compute()
        if self.ema.swapped:
            self.ema.swap_out()  # before ModelCheckpoint's on_validation_end saves
        if self.trainer.sanity_checking:
            if self.initial_val is None:  # a resumed run keeps its original baseline
                self.initial_val = metrics  # the untrained (or hand-off) model: baseline of the gains
            log.warning("held-out reconstruction before training: %s", _fmt(metrics))
            return
        record = {**metrics, "global_nimg": self.global_nimg, "step": int(self.global_step)}
        self.val_history.append(record)
        logged = {f"metric/{k}": float(v) for k, v in metrics.items() if k != "num_images"}
        if self.initial_val is not None:
            logged["metric/psnr_gain_db"] = metrics["psnr"] - self.initial_val["psnr"]
        self.log_dict(logged, sync_dist=True)

    def on_validation_end(self) -> None:
        if self.ema.swapped:
            self.ema.swap_out()

    # ------------------------------------------------------------------ end of fit
    def on_fit_end(self) -> None:
        log_dir = Path(self.trainer.log_dir or ".")  # a collective under DDP: every rank asks
        if self.trainer.global_rank != 0:
            return
        summary = {
            "stage": self.stage,
            "global_nimg": self.global_nimg,
            "stage_nimg": self.stage_nimg,
            "steps": int(self.global_step),
            "skipped_G": self.guard_g.num_skipped,
            "skipped_D": self.guard_d.num_skipped,
            "wall_seconds": None if self._fit_start_time is None else round(time.time() - self._fit_start_time, 1),
            "initial_val": self.initial_val,
            "final_val": self.val_history[-1] if self.val_history else None,
        }
        if self.initial_val and self.val_history:
            summary["psnr_gain_db"] = self.val_history[-1]["psnr"] - self.initial_val["psnr"]
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "tokenizer_summary.json").write_text(json.dumps(summary, indent=2))
        print(
            f"tokenizer stage {self.stage}: {summary['steps']} steps, {self.global_nimg} images in total, "
            f"wall {summary['wall_seconds']} s; held-out {_fmt(self.initial_val)} -> {_fmt(summary['final_val'])}"
            + (f" (PSNR {summary['psnr_gain_db']:+.2f} dB)" if "psnr_gain_db" in summary else "")
        )
        if self.hparams.export_dir:
            self.export(self.hparams.export_dir)

    def export(self, directory: str) -> dict:
        """`save_pretrained` of the EMA tokenizer with the training provenance."""
        provenance = {
            "stage": self.stage,
            "stage_name": self.spec.name,
            "global_nimg": self.global_nimg,
            "stage_nimg": self.stage_nimg,
            "steps": int(self.global_step),
            "init_checkpoint": self.hparams.init_checkpoint,
        }
        with self.ema.swap():
            return self.tokenizer.save_pretrained(directory, weights="ema", provenance=provenance)

    # ------------------------------------------------------------------ checkpoints
    def _hashes(self) -> dict[str, str]:
        if self._frozen_hashes is None:
            self._frozen_hashes = frozen_hashes(self)
        return self._frozen_hashes

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint["state_dict"]
        if self.ema.swapped:  # never store EMA values as the raw weights
            for name, raw in zip(
                self.ema.param_names + self.ema.buffer_names, self.ema.shadow_params + self.ema.shadow_buffers
            ):
                sd[name] = raw.detach().clone()
        frozen = drop_frozen_keys(sd, self._hashes())
        checkpoint[STATE_KEY] = {
            "stage": self.stage,
            "global_nimg": self.global_nimg,
            "stage_nimg": self.stage_nimg,
            "global_batch_size": self.global_batch_size,
            "ema": self.ema.state_dict(),
            "guard_g": self.guard_g.state_dict(),
            "guard_d": self.guard_d.state_dict(),
            "objective": self.objective.state_dict_extra(),
            "rng": self.rng.state_dict(),
            "frozen": frozen,
            "initial_val": self.initial_val,
            "val_history": self.val_history,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume: fill the frozen networks back in (strict loading stays on for the rest), restore state."""
        extra = checkpoint.get(STATE_KEY)
        if extra is None:
            raise KeyError(
                "checkpoint lacks the TokenizerModule state ('tokenizer_training'); "
                "for a previous stage use model.init_checkpoint instead of --ckpt_path"
            )
        if int(extra["stage"]) != self.stage:
            raise ValueError(
                f"--ckpt_path resumes a stage-{extra['stage']} run but this is stage {self.stage}; "
                "start a new stage with model.init_checkpoint"
            )
        fill_frozen_keys(checkpoint["state_dict"], self, extra.get("frozen"), self._hashes())
        self.global_nimg, self.stage_nimg = int(extra["global_nimg"]), int(extra["stage_nimg"])
        self.ema.load_state_dict(extra["ema"])
        self.guard_g.load_state_dict(extra["guard_g"])
        self.guard_d.load_state_dict(extra["guard_d"])
        self.objective.load_state_dict_extra(extra["objective"])
        self.rng.load_state_dict(extra["rng"])
        self.initial_val, self.val_history = extra.get("initial_val"), list(extra.get("val_history", []))


def _require_weights(what: str, preset: str, path: str | None, option: str) -> None:
    if path is None and not preset.startswith("debug"):
        raise ValueError(
            f"the frozen {what} ({preset!r}) has no weights: set {option} to a local file/folder "
            f"(a random frozen network is only meaningful for debug presets; allow_random_frozen=true "
            f"forces it). The CPU demo needs no files: CONFIG=configs/tokenizer/demo.yaml make train-tokenizer"
        )


def _seeded(seed: int, build):
    """`build()` under a private RNG seeded with `seed` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _fmt(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "n/a"
    keys = [k for k in ("psnr", "ssim", "lpips", "rfid", "ris") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys)


__all__ = ["TokenizerModule"]
