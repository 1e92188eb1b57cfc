"""The demo's summary (phase ``summary`` of `vfmvae demo`): ``metrics.json``, the self-checks, the summary text."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .size import DemoSize

Records = Mapping[str, Mapping[str, Any]]  # phase -> its record

# (what is checked, passes?, detail): the demo's two self-checks, on the phases' records.
CHECKS: tuple[tuple[str, Callable[[Records], bool], Callable[[Records], str]], ...] = (
    (
        "reconstructions beat the untrained tokenizer by >= 3 dB PSNR",
        lambda r: r["evaluate"]["reconstruction"]["psnr_gain_db"] >= 3.0,
        lambda r: f"{r['evaluate']['reconstruction']['psnr_gain_db']:+.2f} dB",
    ),
    (
        "sample statistics differ between classes (ANOVA of mean colour, p < 0.01)",
        lambda r: r["evaluate"]["class_difference"]["p_value"] < 0.01,
        lambda r: f"p = {r['evaluate']['class_difference']['p_value']:.2g}",
    ),
)
OUTPUTS = ("reconstructions.png", "samples.png", "se_cknna_heatmap.png", "metrics.json")


def run_checks(records: Records) -> list[dict[str, Any]]:
    checks = []
    for name, ok, detail in CHECKS:
        try:
            checks.append({"check": name, "passed": bool(ok(records)), "detail": detail(records)})
        except (KeyError, TypeError) as err:
            checks.append({"check": name, "passed": False, "detail": f"no result ({err!r})"})
    # Phases added beside the core ones (e.g. t2i) state their own check in their record.
    checks += [dict(r["self_check"]) for r in records.values() if isinstance(r, Mapping) and "self_check" in r]
    return checks


def demo_metrics(size: DemoSize, records: Records, phases: tuple[str, ...], out: Path) -> dict[str, Any]:
    """``metrics.json`` of a finished demo in ``out``: timings, results, checks, missing outputs."""
    seconds = {p: records[p].get("seconds") for p in phases if p in records and p != "summary"}
    cpu = {p: records[p].get("cpu_seconds") for p in phases if p in records and p != "summary"}
    ev = records["evaluate"]
    checks = run_checks(records)
    metrics = {
        "size": size.name,
        "size_config": asdict(size),
        "phase_seconds": seconds,
        "phase_cpu_seconds": cpu,
        "total_seconds": round(sum(v or 0.0 for v in seconds.values()), 1),
        "total_cpu_seconds": round(sum(v or 0.0 for v in cpu.values()), 1),
        "reconstruction": ev["reconstruction"],
        "demo_fid": ev["demo_fid"],
        "fid_feature_network": ev["fid_feature_network"],
        "class_difference": ev["class_difference"],
        "probe_cknna": records["reg"].get("probe_cknna"),
        "reg_final_loss": records["reg"].get("final_loss"),
        "tokenizer": {
            "stage0": records["tokenizer_stage0"]["summary"],
            "stage2": records["tokenizer_stage2"]["summary"],
            "export_sha256": records["export"]["weights_sha256"],
        },
        "latents": {k: records["cache_latents"][k] for k in ("num_written", "latent_shape")},
        "checks": checks,
    }
    missing = [n for n in OUTPUTS if n != "metrics.json" and (not (out / n).is_file() or (out / n).stat().st_size == 0)]
    if missing:
        checks.append({"check": "outputs exist", "passed": False, "detail": ", ".join(missing)})
    metrics["passed"] = all(c["passed"] for c in checks)
    return metrics


def render_summary(size: DemoSize, out: Path, m: Mapping[str, Any]) -> str:
    """The summary printed at the end of the demo (and written to ``summary.txt``), at most 25 lines."""
    rec, fid = m["reconstruction"], m["demo_fid"]
    lines = [
        "=" * 78,
        f"VFM-VAE demo ({size.name}; tokenizer VFM family {size.vfm_family}) - outputs in {out}",
        "-" * 78,
        "phase wall [s] " + ", ".join(f"{k} {v:.0f}" for k, v in m["phase_seconds"].items() if v is not None),
        f"total {m['total_seconds']:.0f} s wall, {m['total_cpu_seconds']:.0f} s CPU (target < {size.budget_s:.0f} s;"
        " CPU time ~ the wall time on idle cores)",
        f"tokenizer  held-out PSNR {rec['untrained']['psnr']:.2f} -> {rec['trained']['psnr']:.2f} dB, "
        f"SSIM {rec['untrained']['ssim']:.3f} -> {rec['trained']['ssim']:.3f} ({rec['trained']['num_images']} images)",
        f"latents    {m['latents']['num_written']} cached, shape {m['latents']['latent_shape']}",
        "REG        final " + ", ".join(f"{k} {v:.4f}" for k, v in sorted((m["reg_final_loss"] or {}).items())),
        "probe      CKNNA " + ", ".join(f"{k} {v:.3f}" for k, v in (m["probe_cknna"] or {}).items()),
        f"samples    demo FID {fid['fid']:.3f} vs held-out ({int(fid['num_samples'])} samples, "
        f"{int(fid['num_reference'])} images; real train images: {fid['fid_train_vs_val']:.3f}; random features)",
        "files      reconstructions.png, samples.png (row = class), se_cknna_heatmap.png, metrics.json, "
        "TensorBoard: tensorboard --logdir " + str(out),
        "-" * 78,
    ]
    lines += [f"{'PASS' if c['passed'] else 'FAIL'}  {c['check']}: {c['detail']}" for c in m["checks"]]
    if not size.enforce_checks:
        lines.append(f"(size {size.name!r} trains too briefly to enforce the checks: reported only)")
    lines += ["=" * 78]
    return "\n".join(lines)


__all__ = ["CHECKS", "OUTPUTS", "demo_metrics", "render_summary", "run_checks"]
