"""Short captions for the embedded demo photographs and the text-to-image demo data (docs/text_to_image.md,
"Demo").

`DEMO_CAPTIONS` gives each demo photograph (`datamodules.demo_data.PHOTOS`) a short description of what
the photograph shows; the debug tokenizer knows their words (`vfmvae.text.tokens.DEBUG_WORDS`).
`DemoCaptionDataModule` builds the demo latent cache (`datamodules.demo_latents.build_demo_latent_cache`,
the production caching path) and writes the caption sidecar from each latent's class, then serves it as
`CaptionDataModule` does in its latents mode.
"""

from __future__ import annotations

from pathlib import Path

from datamodules.captions_cache import CAPTION_SIDECAR, write_caption_sidecar
from datamodules.captions_datamodule import CaptionDataModule
from datamodules.demo_data import DEMO_CLASSES
from datamodules.demo_latents import build_demo_latent_cache
from datamodules.latent_dataset import LatentDataset

__all__ = ["DEMO_CAPTIONS", "DemoCaptionDataModule", "demo_caption_of"]

DEMO_CAPTIONS: dict[str, str] = {
    "astronaut": "a portrait of an astronaut with a flag",
    "brick": "a grey brick wall",
    "camera": "a black and white photo of a man with a camera on a tripod",
    "chelsea": "a close up of a brown cat",
    "china": "a temple with trees under a blue sky",
    "coffee": "a cup of coffee on a red table",
    "coins": "old coins on a dark background",
    "flower": "a pink flower with green leaves",
    "grace_hopper": "a portrait of grace hopper in a navy uniform",
    "grass": "green grass texture",
    "gravel": "grey gravel stones texture",
    "hubble_deep_field": "galaxies in the dark night sky",
    "immunohistochemistry": "stained cells under a microscope",
    "retina": "an orange retina with red blood vessels",
    "rocket": "a white rocket on a launch pad",
}


def demo_caption_of(label: int) -> str:
    """The caption of demo class id ``label`` (ids are positions in the sorted class names)."""
    return DEMO_CAPTIONS[DEMO_CLASSES[label]]


class DemoCaptionDataModule(CaptionDataModule):
    """Demo photographs -> latent cache + caption sidecar -> caption latent batches (see the module docstring)."""

    def __init__(
        self,
        root: str = "outputs/demo/t2i",
        tokenizer: str | None = None,
        tokenizer_preset: str = "debug",
        num_per_class: int = 8,
        resolution: int = 64,
        latent_policy: str = "lightningdit",
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            mode="latents",
            latent_root=str(Path(root) / "latents"),
            latent_policy=latent_policy,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
        )
        self.root, self.tokenizer, self.tokenizer_preset = Path(root), tokenizer, tokenizer_preset
        self.num_per_class, self.resolution = num_per_class, resolution

    def prepare_data(self) -> None:
        cache = build_demo_latent_cache(
            self.root, self.tokenizer, self.tokenizer_preset, self.num_per_class, self.resolution, self.seed
        )
        if not (cache / CAPTION_SIDECAR).is_file():
            latents = LatentDataset(cache, normalize=False)
            captions = {latents[i]["key"]: demo_caption_of(latents[i]["label"]) for i in range(len(latents))}
            write_caption_sidecar(cache, captions)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # idempotent; a single-process demo
        super().setup(stage)
