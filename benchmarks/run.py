"""`python -m benchmarks` — run a suite, print a markdown table, write JSON.

    python -m benchmarks --suite cpu                       # what `make bench` runs
    python -m benchmarks --suite gpu --out-dir outputs/bench
    python -m benchmarks --suite gpu --only LightningDiT --compile --activation-checkpointing
    python -m benchmarks --suite cpu --kind dit_train --dtype bf16 --fused-optimizer

Each row: images/s (= images per step / mean step time), step time, peak memory, achieved model
TFLOP/s and MFU = model FLOP/s / device peak (`benchmarks/hardware.py`; on CPU the peak is an estimate
and the MFU is marked `~`). A case that fails is reported with its error and the run goes on, so one
missing piece does not hide the other rows. `--max-seconds` skips the remaining cases once the budget
is spent (a skipped row says so).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

from benchmarks.cases import KINDS, BenchCase, get_suite
from benchmarks.dit_step import build_dit_train
from benchmarks.hardware import device_peak, environment
from benchmarks.inference import build_cknna, build_latent_cache, build_sampling
from benchmarks.timing import measure, rss_bytes
from benchmarks.tokenizer_step import build_tokenizer_train

BUILDERS = {
    "dit_train": build_dit_train,
    "tokenizer_train": build_tokenizer_train,
    "sampling": build_sampling,
    "latent_cache": build_latent_cache,
    "cknna": build_cknna,
}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def host_syncs(step, device: torch.device) -> list[str]:
    """CUDA only: run one extra step with `torch.cuda.set_sync_debug_mode("warn")` and return the
    synchronising operations it reported (an empty list = no host sync in the step)."""
    if device.type != "cuda":
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize(device)
    return [str(w.message).splitlines()[0][:160] for w in caught if "synchroniz" in str(w.message).lower()]


def run_case(case: BenchCase, device: torch.device, sync_debug: bool = False) -> dict:
    """Build, time and summarise one case; returns the JSON row (never raises for a failing case)."""
    row = {
        "name": case.name,
        "kind": case.kind,
        "switches": case.switches(),
        "batch_size": case.batch_size,
        "case": case.to_dict(),
        "status": "ok",
    }
    t0, rss_base = time.perf_counter(), rss_bytes()
    try:
        workload = BUILDERS[case.kind](case, device)
        row["setup_s"] = time.perf_counter() - t0
        row["batch_size"] = workload.images_per_step  # CKNNA: n samples
        timing = measure(workload.step, device, warmup=case.warmup, iters=case.iters, rss_base=rss_base)
        flops = workload.flops_per_step() if callable(workload.flops_per_step) else workload.flops_per_step
        if sync_debug:
            row["host_syncs"] = host_syncs(workload.step, device)
    except Exception as err:  # noqa: BLE001 - report and continue with the other rows
        row.update(status="error", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=6))
        return row
    finally:
        _free(device)
    peak = device_peak(device, case.dtype)
    achieved = flops / timing.step_s if flops else None
    row.update(
        timing=timing.to_dict(),
        images_per_s=workload.images_per_step / timing.step_s,
        step_ms=timing.step_s * 1e3,
        peak_memory_gb=timing.peak_memory_gb,
        flops_per_step=flops,
        flops_method=workload.flops_method,
        flops_per_image=flops / workload.images_per_step if flops else None,
        achieved_tflops=achieved / 1e12 if achieved else None,
        mfu=achieved / peak.peak_flops if achieved and peak.peak_flops else None,
        mfu_estimated=peak.estimated,
        params=workload.params,
        notes=workload.notes,
        wall_s=time.perf_counter() - t0,
    )
    return row


def _fmt(value, spec: str, prefix: str = "") -> str:
    return "-" if value is None else f"{prefix}{value:{spec}}"


def markdown_table(rows: list[dict]) -> str:
    """The table printed at the end of a run (and pasted into docs/benchmarks.md)."""
    head = (
        "| case | switches | batch | images/s | step ms | peak mem GB | model TFLOP/s | MFU |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['name']} | {r['switches']} | {r['batch_size']} | {r['status']}: "
                f"{r.get('error', '')[:80]} | | | | |"
            )
            continue
        mfu = _fmt(r["mfu"] * 100 if r["mfu"] is not None else None, ".1f", "~" if r["mfu_estimated"] else "")
        lines.append(
            f"| {r['name']} | {r['switches']} | {r['batch_size']} | {r['images_per_s']:.2f} | {r['step_ms']:.1f} | "
            f"{_fmt(r['peak_memory_gb'], '.3f')} | {_fmt(r['achieved_tflops'], '.4f')} | "
            f"{mfu}{'%' if mfu != '-' else ''} |"
        )
    return "\n".join(lines)


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--suite", default="cpu", help="cpu | gpu | gpu-sampling | gpu-extra | smoke (benchmarks/cases.py)")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", default="outputs/bench", help="JSON goes here (gitignored)")
    p.add_argument("--only", action="append", default=[], help="keep cases whose name contains this (repeatable)")
    p.add_argument("--kind", action="append", default=[], choices=KINDS, help="keep cases of this kind")
    p.add_argument("--dtype", choices=["fp32", "tf32", "bf16"], help="override the compute dtype of every case")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile blocks")
    p.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--fused-optimizer", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="tokenizer only")
    p.add_argument("--batch-size", type=int, help="override every case's batch size")
    p.add_argument("--warmup", type=int, help="override warm-up steps")
    p.add_argument("--iters", type=int, help="override timed steps")
    p.add_argument("--max-seconds", type=float, default=None, help="skip remaining cases after this budget")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    p.add_argument(
        "--sync-debug",
        action="store_true",
        help="CUDA: list host syncs of one extra step per case (torch.cuda.set_sync_debug_mode)",
    )
    return p


def select_cases(args: argparse.Namespace) -> list[BenchCase]:
    cases = get_suite(args.suite)
    if args.only:
        cases = [c for c in cases if any(s.lower() in c.name.lower() for s in args.only)]
    if args.kind:
        cases = [c for c in cases if c.kind in args.kind]
    overrides = {
        k: getattr(args, k)
        for k in (
            "dtype",
            "compile",
            "activation_checkpointing",
            "fused_optimizer",
            "channels_last",
            "batch_size",
            "warmup",
            "iters",
        )
        if getattr(args, k) is not None
    }
    if not cases:
        raise SystemExit(f"no case of suite {args.suite!r} matches --only {args.only} --kind {args.kind}")
    return [c.replace(**overrides) for c in cases]


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks") -> list[dict]:
    args = build_parser(prog).parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(threads)  # main() is also called in-process (tests)


def _run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the tokenizer's official setting; fixed shapes here
    cases = select_cases(args)
    start, rows = time.perf_counter(), []
    for case in cases:
        if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
            rows.append(
                {
                    "name": case.name,
                    "kind": case.kind,
                    "switches": case.switches(),
                    "batch_size": case.batch_size,
                    "case": case.to_dict(),
                    "status": "skipped",
                    "error": f"--max-seconds {args.max_seconds:g} spent",
                }
            )
            continue
        print(f"[bench] {case.name} ({case.switches()}, batch {case.batch_size}) ...", file=sys.stderr, flush=True)
        rows.append(run_case(case, device, args.sync_debug))
        r = rows[-1]
        print(
            f"[bench]   {r['status']} "
            + (f"{r['images_per_s']:.2f} images/s" if r["status"] == "ok" else r.get("error", "")),
            file=sys.stderr,
            flush=True,
        )
        for msg in sorted(set(r.get("host_syncs", []))):
            print(f"[bench]   host sync: {msg}", file=sys.stderr, flush=True)
    peak = device_peak(device, "bf16" if any(c.dtype == "bf16" for c in cases) else "fp32")
    report = {
        "suite": args.suite,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": peak.to_dict(),
        "environment": environment(),
        "total_s": time.perf_counter() - start,
        "rows": rows,
    }
    table = markdown_table(rows)
    print(f"\nDevice: {peak.name} ({peak.note}); {report['date_utc']}; total {report['total_s']:.0f} s\n")
    print(table)
    for r in rows:  # the project's bar and goal for one H100/H200-class GPU
        case = r["case"]
        if (
            r["status"] == "ok"
            and case["kind"] == "dit_train"
            and case["preset"] == "LightningDiT-XL/1"
            and not case["overrides"]
        ):
            verdict = "goal met" if r["images_per_s"] >= 500 else "bar met" if r["images_per_s"] >= 300 else "below bar"
            print(f"{r['name']} ({r['switches']}): {r['images_per_s']:.0f} images/s - {verdict} (bar 300, goal 500)")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report["date_utc"].replace(":", "").replace("+0000", "Z")
    for path in (out_dir / f"{args.suite}-{stamp}.json", out_dir / f"{args.suite}-latest.json"):
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str))
        os.replace(tmp, path)  # atomic: a reader never sees half a report
    print(f"\nJSON: {out_dir / f'{args.suite}-latest.json'}")
    return rows


if __name__ == "__main__":
    main()
