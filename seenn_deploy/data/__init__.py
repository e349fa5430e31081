"""Datasets from specs ("digits", "npz:FILE", "imagefolder:DIR", ...) as float32 arrays in memory.

Imports only numpy and the standard library; Pillow is imported when an image folder is read.
"""

from seenn_deploy.data.dataset import SPLITS, ArrayDataset
from seenn_deploy.data.normalisation import Normalisation
from seenn_deploy.data.source import DataSource
from seenn_deploy.data.spec import parse_data_spec

__all__ = ["SPLITS", "ArrayDataset", "DataSource", "Normalisation", "parse_data_spec"]
