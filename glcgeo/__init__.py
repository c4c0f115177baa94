"""glcgeo: GLCNet self-supervised segmentation pretraining on georeferenced mosaics."""

__version__ = '0.1.0'
