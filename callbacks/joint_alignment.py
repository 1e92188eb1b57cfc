"""Joint alignment, diffusion side (docs/design.md, "Diffusion networks and the network interface"): REG/REPA targets from a frozen VFM, as a callback.

Each training batch's images (``batch["image"]``, uint8 ``(B, 3, H, W)``; the latent cache stores the
ADM crop beside each latent, flipped with it) go through a frozen VFM at ``image_size`` px with
``interpolation`` (the paper: DINOv2-B/14, 224 px bicubic, ImageNet mean/std) under ``no_grad``.
The callback puts the targets into the batch, and the network turns them into its training state
(`vfmvae.dit.interface.DiffusionNetwork.training_state`)::

    batch["alignment"] = {"proj_targets": [(B, 1+N, D)] (class-token networks) or [(B, N, D)],
                          "cls_target": (B, D) or None, "proj_weight": 0.5, "cls_weight": 0.03}

* A network whose state carries a VFM class token (``net.class_token_dim`` set: REG): target =
  ``x_norm_clstoken`` prepended to ``x_norm_patchtokens`` (257 x 768 for XL/1); the class token is also
  the input state (noised by the objective) and its velocity target. Weights 0.5 (projection) and 0.03
  (class token), on from step 0 (the paper).
* A projector-only network (LightningDiT with a REPA projector): the N patch tokens only, projection
  weight 0.5, no class token.

VFM weights. ``vfm="dinov2-vitb14"`` reads the torch.hub ``dinov2_vitb14`` ``.pth`` that REG loads;
the timm wrapper resamples its 37x37 position table bicubically to the 16x16 grid of a 224 px input,
which is what REG does once at load time. ``vfm="dinov2-base"`` reads a transformers
``facebook/dinov2-base`` folder (same network, HF layout; interpolated the same way by transformers).
``vfm_pretrained=None`` builds random weights (tests and the CPU demo only).

Class-token substitute for VFMs without a CLS token (the tokenizer's own SigLIP2, run at 256 px ->
16x16 tokens): the mean of the patch tokens after the post-LayerNorm (``cls_substitute="mean"``), i.e.
the same pooled vector SE-CKNNA uses for SigLIP2 (docs/design.md, "SE-CKNNA"). SigLIP's own MAP-head pooling is
not used because the project drops that head.

On/off by optimiser step: targets are produced for ``start_step <= global_step < end_step``
(``end_step=None``: to the end). Outside that window no ``"alignment"`` key is set (REG then trains
with a zero class token). Each rank computes the targets of its own batch, so DDP and FSDP need no
collective here; the VFM is a plain attribute of the callback (not of the LightningModule), so it
is never averaged by EMA, never sharded and never saved. Counters and the window go into checkpoints.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from vfmvae.codec import uint8_to_unit
from vfmvae.dit.interface import check_network
from vfmvae.tokenizer.loading import resolve_path

log = logging.getLogger(__name__)

CLS_SUBSTITUTES = ("mean",)


class JointAlignmentCallback(Callback):
    """Frozen-VFM alignment targets for REG / REPA (see the module docstring).

    Args:
        vfm: a `vfmvae.vfm.build_vfm` preset (``"dinov2-vitb14"`` torch.hub file, ``"dinov2-base"`` HF
            folder, ``"siglip2-large-patch16-512"``, ``"debug-dinov2"`` ...).
        vfm_pretrained: local weights (file or folder); ``None`` = random init (tests/demo only).
        vfm_config: preset field overrides, e.g. ``{"compute_dtype": "float32"}`` on CPU.
        image_size: input side for the VFM (224 for DINOv2-B/14 -> 16x16 tokens; 256 for SigLIP2/16).
        interpolation / antialias: the resize (REG: bicubic, no antialias).
        layer: VFM layer (``-1`` = final output after the post-LayerNorm, the REPA/REG choice).
        proj_weight / cls_weight: loss weights put into the batch (paper: 0.5 / 0.03).
        use_cls: ``None`` = whether the network's state carries a class token (REG yes, LightningDiT no).
        cls_substitute: how to make a class token for VFMs without one (``"mean"`` of patch tokens).
        start_step / end_step: optimiser-step window in which alignment is on.
    """

    def __init__(
        self,
        vfm: str = "dinov2-vitb14",
        vfm_pretrained: str | None = None,
        vfm_config: dict[str, Any] | None = None,
        image_size: int = 224,
        interpolation: str = "bicubic",
        antialias: bool | str = False,
        layer: int = -1,
        proj_weight: float = 0.5,
        cls_weight: float = 0.03,
        use_cls: bool | None = None,
        cls_substitute: str = "mean",
        start_step: int = 0,
        end_step: int | None = None,
    ) -> None:
        if proj_weight < 0 or cls_weight < 0:
            raise ValueError(f"alignment weights must be >= 0, got proj_weight={proj_weight}, cls_weight={cls_weight}")
        if start_step < 0 or (end_step is not None and end_step <= start_step):
            raise ValueError(f"alignment window [{start_step}, {end_step}) is empty or negative")
        if cls_substitute not in CLS_SUBSTITUTES:
            raise ValueError(f"unknown cls_substitute {cls_substitute!r}; choose one of {CLS_SUBSTITUTES}")
        self.vfm_name, self.vfm_pretrained, self.vfm_config = vfm, vfm_pretrained, dict(vfm_config or {})
        self.image_size, self.interpolation, self.antialias, self.layer = image_size, interpolation, antialias, layer
        self.proj_weight, self.cls_weight = float(proj_weight), float(cls_weight)
        self.use_cls, self.cls_substitute = use_cls, cls_substitute
        self.start_step, self.end_step = int(start_step), end_step
        self.vfm: torch.nn.Module | None = None
        self.num_aligned_batches = 0
        self.num_skipped_batches = 0
        self._cls = False

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        net = check_network(getattr(pl_module, "net", None), "JointAlignmentCallback's pl_module.net")
        if self.vfm is None:
            from vfmvae.vfm import build_vfm

            self.vfm_pretrained = resolve_path(self.vfm_pretrained, "JointAlignmentCallback.vfm_pretrained")
            if self.vfm_pretrained is None:
                log.warning(
                    "joint alignment: %s with RANDOM weights (vfm_pretrained not set): tests/demo only", self.vfm_name
                )
            self.vfm = build_vfm(self.vfm_name, pretrained=self.vfm_pretrained, config=self.vfm_config or None)
        self._cls = (net.class_token_dim is not None) if self.use_cls is None else bool(self.use_cls)
        self._check_shapes(net)

    def _check_shapes(self, net: torch.nn.Module) -> None:
        patch = int(self.vfm.patch_size)
        if self.image_size % patch:
            raise ValueError(f"alignment image_size {self.image_size} is not a multiple of the VFM patch {patch}")
        grid, want = self.image_size // patch, int(net.token_grid)
        if grid != want:
            raise ValueError(
                f"the VFM gives a {grid}x{grid} token grid at {self.image_size} px, but the diffusion "
                f"network has {want}x{want} tokens: set image_size={want * patch}"
            )
        dim = net.alignment_dim
        if dim is None:
            raise ValueError("the diffusion network has no projector to align (LightningDiT: set repa_encoder_depth)")
        if dim != int(self.vfm.hidden_size):
            raise ValueError(
                f"the network's projector predicts {dim} features, the VFM {self.vfm_name} gives "
                f"{self.vfm.hidden_size} (set z_dims / repa_z_dim to match)"
            )

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.vfm.to(pl_module.device)

    # ------------------------------------------------------------------ per batch
    def active(self, step: int) -> bool:
        return step >= self.start_step and (self.end_step is None or step < self.end_step)

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> dict[str, Any]:
        """uint8 ``(B, 3, H, W)`` -> the ``batch["alignment"]`` dict (float32 targets)."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"alignment needs uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = uint8_to_unit(images)
        want_cls = self._cls and bool(getattr(self.vfm, "has_cls", False))
        out = self.vfm(
            x,
            [self.layer],
            size=self.image_size,
            interpolation=self.interpolation,
            antialias=self.antialias,
            return_cls=want_cls,
        )
        tokens, cls = (out[0][0], out[1][0]) if want_cls else (out[0], None)
        tokens = tokens.float()
        cls_target = None
        if self._cls:
            # No CLS token (SigLIP2): the mean patch token stands in for it (see the module docstring).
            cls_target = cls.float() if cls is not None else tokens.mean(dim=1)
            proj = torch.cat([cls_target[:, None], tokens], dim=1)
        else:
            proj = tokens
        return {
            "proj_targets": [proj],
            "cls_target": cls_target,
            "proj_weight": self.proj_weight,
            "cls_weight": self.cls_weight if self._cls else 0.0,
        }

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not self.active(trainer.global_step):
            batch.pop("alignment", None)
            self.num_skipped_batches += 1
            return
        if "image" not in batch:
            raise KeyError(
                "joint alignment needs batch['image'] (uint8): cache latents with store_images=true and "
                "give the DataModule return_images=true"
            )
        batch["alignment"] = self.targets(batch["image"])
        self.num_aligned_batches += 1

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pl_module.log("train/alignment_on", float(self.active(trainer.global_step)), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {
            "start_step": self.start_step,
            "end_step": self.end_step,
            "vfm": self.vfm_name,
            "vfm_pretrained": None if self.vfm_pretrained is None else str(self.vfm_pretrained),
            "image_size": self.image_size,
            "proj_weight": self.proj_weight,
            "cls_weight": self.cls_weight,
            "num_aligned_batches": self.num_aligned_batches,
            "num_skipped_batches": self.num_skipped_batches,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("vfm", self.vfm_name) != self.vfm_name:
            log.warning(
                "joint alignment: resuming with VFM %s, the checkpoint used %s", self.vfm_name, state_dict["vfm"]
            )
        # The window and weights come from the checkpoint, so a resumed run keeps its schedule.
        self.start_step = int(state_dict.get("start_step", self.start_step))
        self.end_step = state_dict.get("end_step", self.end_step)
        self.proj_weight = float(state_dict.get("proj_weight", self.proj_weight))
        self.cls_weight = float(state_dict.get("cls_weight", self.cls_weight))
        self.num_aligned_batches = int(state_dict.get("num_aligned_batches", 0))
        self.num_skipped_batches = int(state_dict.get("num_skipped_batches", 0))
