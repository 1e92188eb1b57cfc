"""Metrics (pure functions of features; no lightning): CKNNA / SE-CKNNA and the ADM suite (FID, sFID, IS, P/R)."""

from .cknna import cknna
from .frechet import FeatureStatistics, IllConditionedWarning, compute_statistics, frechet_distance
from .inception_score import inception_score
from .precision_recall import precision_recall

__all__ = [
    "cknna",
    "FeatureStatistics",
    "IllConditionedWarning",
    "compute_statistics",
    "frechet_distance",
    "inception_score",
    "precision_recall",
]
