"""The names of GLCNet's variants, without torch (the command line lists them)."""

__all__ = ['ABLATIONS', 'MATCHINGS']

#: Model variants of the paper: the full model and its three ablations.
ABLATIONS = ('full', 'no_style', 'global_only', 'local_only')

#: How matched regions are placed in the two views.
MATCHINGS = ('ground', 'centre')
