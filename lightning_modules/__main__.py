"""The ``vfmvae`` command: ``vfmvae {fit,validate,test,predict} --config ...`` or ``vfmvae <subcommand> ...``.

``fit``/``validate``/``test``/``predict`` go to the LightningCLI (`lightning_modules/cli.py`). Every other
subcommand is a module of `vfmvae/commands/` (no Lightning) or `lightning_modules/commands/` (Lightning),
found by name (``cache-latents`` -> ``cache_latents.py``) so that adding a command is adding a file.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

# Hub access is off unless the user turns it on; it must be set before transformers/timm import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LIGHTNING_CLI = ("fit", "validate", "test", "predict")
COMMAND_PACKAGES = ("vfmvae.commands", "lightning_modules.commands")


def _command_modules() -> dict[str, str]:
    """``{command name: module path}`` over both command packages (the Lightning one wins a clash)."""
    found: dict[str, str] = {}
    for package in COMMAND_PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                found[info.name.replace("_", "-")] = f"{package}.{info.name}"
    return found


def _summary(module_path: str) -> str:
    """First docstring line of a command module, read without importing it (imports can be slow)."""
    import ast

    spec = importlib.util.find_spec(module_path)
    with open(spec.origin, encoding="utf-8") as handle:
        doc = ast.get_docstring(ast.parse(handle.read())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def usage() -> str:
    lines = ["usage: vfmvae <command> [options]   (vfmvae <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<20} LightningCLI {name} (--config run.yaml [--config trainer.yaml])" for name in LIGHTNING_CLI]
    lines += [f"  {name:<20} {_summary(path)}" for name, path in sorted(_command_modules().items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in LIGHTNING_CLI or argv[0].startswith("--"):
        from lightning_modules.cli import main as cli_main

        return cli_main(argv)
    commands = _command_modules()
    if argv[0] not in commands:
        print(f"vfmvae: unknown command {argv[0]!r}; `vfmvae --help` lists the commands", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(commands[argv[0]])
    return module.main(argv[1:])


def console() -> int:
    """Console-script entry point: the exit status (a LightningCLI run returns its CLI object, i.e. success)."""
    result = main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(console())
