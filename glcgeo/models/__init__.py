"""Networks of glcgeo.

The networks are imported on first use, so that the names of GLCNet's variants
(:data:`ABLATIONS`, :data:`MATCHINGS`) come without torch: the command line lists
them in its help.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .variants import ABLATIONS, MATCHINGS

if TYPE_CHECKING:
    from .glcnet import GLCNet, centre_matched_boxes, pool_regions, style_vector

__all__ = [
    'ABLATIONS',
    'MATCHINGS',
    'GLCNet',
    'centre_matched_boxes',
    'pool_regions',
    'style_vector',
]


def __getattr__(name: str) -> Any:
    """Import the networks when one is first asked for."""
    if name in __all__:
        return getattr(importlib.import_module('.glcnet', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
