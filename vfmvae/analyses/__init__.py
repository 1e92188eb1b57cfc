"""The paper's analyses as tables read from metric records (docs/analyses.md).

Public entry points:
    PAPER_TABLE1, TABLE1_COLUMNS            the paper's Table 1 numbers and the column names
    read_table1_row, format_table1          one tokenizer's measured numbers from its records; the side-by-side table
    feature_extractor                       named image feature extractors for Frechet distances (injectable)
"""

from .features import feature_extractor, frechet_distance_of
from .table1 import PAPER_TABLE1, TABLE1_COLUMNS, format_table1, read_table1_row

__all__ = ["PAPER_TABLE1", "TABLE1_COLUMNS", "read_table1_row", "format_table1", "feature_extractor",
           "frechet_distance_of"]  # fmt: skip
