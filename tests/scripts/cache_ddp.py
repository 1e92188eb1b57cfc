"""Run by tests/test_latent_cache.py: cache a folder with 2 CPU processes (gloo DDP).

The test puts the repository and tests/ on PYTHONPATH (this file imports the test module's stand-in tokenizer).
"""

import sys

from lightning.pytorch import Trainer
from test_latent_cache import IMAGE_SIZE, StandInTokenizer

from datamodules.latent_cache import LatentCacheDataModule
from lightning_modules.latent_cache import LatentCacheModule, LatentShardWriter

if __name__ == "__main__":
    data_root, out_dir = sys.argv[1], sys.argv[2]
    dm = LatentCacheDataModule(data_root, out_dir, image_size=IMAGE_SIZE, shard_size=3, batch_size=2, num_workers=0)
    writer = LatentShardWriter(store_images=False, provenance={"tokenizer": {"weights_sha256": "abc"}})
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_progress_bar=False,
        callbacks=[writer],
        enable_model_summary=False,
    )
    trainer.predict(LatentCacheModule(StandInTokenizer()), datamodule=dm, return_predictions=False)
