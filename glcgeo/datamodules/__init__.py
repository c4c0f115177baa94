"""Lightning data modules: GLCNet pretraining pairs and fine-tuning tiles."""

from .glcnet import GLCNetDataModule
from .segmentation import MaskEncoder, SegmentationDataModule

__all__ = ['GLCNetDataModule', 'MaskEncoder', 'SegmentationDataModule']
