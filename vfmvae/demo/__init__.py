"""Plain-PyTorch helpers of `make demo` (`vfmvae demo`): the demo's sizes, its evaluation (reconstruction
PSNR/SSIM, a demo FID, the class-difference test) and its summary with the self-checks."""

from .evaluation import class_difference_test, demo_feature_net, demo_fid, evaluate_demo, reconstruction_metrics
from .size import NUM_CLASSES, RUNS, DemoSize, available_sizes, load_size, run_configs, size_fingerprint
from .summary import CHECKS, OUTPUTS, demo_metrics, render_summary

__all__ = [
    "CHECKS",
    "NUM_CLASSES",
    "OUTPUTS",
    "RUNS",
    "DemoSize",
    "available_sizes",
    "class_difference_test",
    "demo_feature_net",
    "demo_fid",
    "demo_metrics",
    "evaluate_demo",
    "load_size",
    "reconstruction_metrics",
    "render_summary",
    "run_configs",
    "size_fingerprint",
]
