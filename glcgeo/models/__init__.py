"""Networks of glcgeo."""

from .glcnet import (
    ABLATIONS,
    MATCHINGS,
    GLCNet,
    centre_matched_boxes,
    pool_regions,
    style_vector,
)

__all__ = [
    'ABLATIONS',
    'MATCHINGS',
    'GLCNet',
    'centre_matched_boxes',
    'pool_regions',
    'style_vector',
]
