"""Benchmarks: throughput, peak memory and MFU of the training and inference steps.

Plain PyTorch with the project's modules (no Lightning), so the numbers do not depend on the
LightningModules. Entry points: `python -m benchmarks --suite cpu|gpu|gpu-extra|smoke` (`make bench`),
`benchmarks/gpu_check.sh` (the prepared GPU run), `benchmarks.flops.dit_forward_flops` (analytic FLOPs).
"""
