"""Lightning tasks: GLCNet pretraining and fine-tuning, as TorchGeo tasks."""

from .glcnet import GLCNetTask
from .segmentation import FinetuneTask

__all__ = ['FinetuneTask', 'GLCNetTask']
