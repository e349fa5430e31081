"""Datasets from specs ("digits", "npz:FILE", "imagefolder:DIR", ...) as float32 arrays in memory.

Imports only numpy and the standard library; Pillow is imported when an image folder is read,
tqdm when a progress bar is shown.
"""

from seenn_deploy.data.dataset import SPLITS, ArrayDataset, check_labels
from seenn_deploy.data.normalisation import Normalisation
from seenn_deploy.data.source import DataSource
from seenn_deploy.data.spec import parse_data_spec
from seenn_deploy.data.validation import ValidationSlice, load_validation, split_validation

__all__ = ["SPLITS", "ArrayDataset", "DataSource", "Normalisation", "ValidationSlice", "check_labels",
           "load_validation", "parse_data_spec", "split_validation"]
