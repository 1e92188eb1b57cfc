"""Subcommands of ``vfmvae`` that need no Lightning (one module per command).

A module ``vfmvae/commands/<name>.py`` is the command ``vfmvae <name with - for _>``. It defines
``build_parser() -> argparse.ArgumentParser`` and ``main(argv: list[str] | None = None) -> int | None``;
the first line of its docstring is its line in ``vfmvae --help``. The dispatcher is
`lightning_modules/__main__.py`; commands that run a Lightning ``Trainer`` live in
`lightning_modules/commands/` under the same rules.
"""
