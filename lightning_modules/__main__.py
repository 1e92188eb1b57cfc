"""`python -m lightning_modules {fit,validate,test,predict} --config CONFIG.yaml [--config TRAINER.yaml]`."""

from lightning_modules.cli import main

if __name__ == "__main__":
    main()
