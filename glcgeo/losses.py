"""GLCNet's loss: NT-Xent on the global and the local embeddings."""

from lightly.loss import DCLLoss, NTXentLoss
from torch import Tensor, nn

from .errors import GlcgeoError

__all__ = ['GLCNetLoss']


class GLCNetLoss(nn.Module):
    """Weighted sum of a global and a local NT-Xent loss.

    ``loss = lam * loss_global + (1 - lam) * loss_local`` when both parts are
    present (Li et al., IEEE TGRS 60, 2022, lambda = 0.5), the single part alone for
    the global-only and local-only ablations.

    Both parts use NT-Xent with cosine similarity over the 2N embeddings of the two
    views, each embedding's positive being the other view's embedding with the same
    index. The standard form (SimCLR, lightly's :class:`~lightly.loss.NTXentLoss`)
    keeps the positive in the denominator; the decoupled form (Yeh et al. 2021,
    lightly's :class:`~lightly.loss.DCLLoss` without weighting; the authors' last
    version) leaves it out. For the local part the N embeddings are batch x regions,
    so the other regions of the same image are negatives too.

    With *gather_distributed*, embeddings are gathered from all processes (with
    gradient): each process's loss averages over its own rows against the negatives
    of the whole global batch, so the mean over processes equals the loss of the
    global batch on one process and DDP's averaged gradient equals its gradient.
    Every process must then hold the same number of images and of regions.

    Example:
        >>> criterion = GLCNetLoss(lam=0.5, temperature=0.5)
        >>> losses = criterion(model(image1, image2, boxes1, boxes2))
        >>> losses['loss'].backward()

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        lam: float = 0.5,
        temperature: float = 0.5,
        decoupled: bool = False,
        gather_distributed: bool = False,
    ) -> None:
        """Initialize a new GLCNetLoss.

        Args:
            lam: weight of the global loss in [0, 1]; the local loss gets ``1 - lam``.
            temperature: NT-Xent temperature (> 0).
            decoupled: use the decoupled form (positive left out of the denominator)
                instead of the standard SimCLR form.
            gather_distributed: gather embeddings across processes before the loss.

        Raises:
            GlcgeoError: if *lam* is outside [0, 1] or *temperature* <= 0.
        """
        super().__init__()
        if not 0 <= lam <= 1:
            raise GlcgeoError(f'lam must be in [0, 1], got {lam}')
        if temperature <= 0:
            raise GlcgeoError(f'temperature must be positive, got {temperature}')
        self.lam = lam
        self.criterion: nn.Module
        if decoupled:
            self.criterion = DCLLoss(
                temperature=temperature,
                weight_fn=None,
                gather_distributed=gather_distributed,
            )
        else:
            self.criterion = NTXentLoss(
                temperature=temperature, gather_distributed=gather_distributed
            )

    def forward(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Compute the losses of one batch.

        Args:
            outputs: :class:`~glcgeo.models.GLCNet` outputs: ``global1``,
                ``global2`` [B, D] and/or ``local1``, ``local2`` [B * R, D].

        Returns:
            ``loss`` (the total) and ``loss_global`` / ``loss_local`` for the parts
            present.

        Raises:
            ValueError: if *outputs* holds neither global nor local embeddings.
        """
        losses: dict[str, Tensor] = {}
        for part in ('global', 'local'):
            if f'{part}1' in outputs:
                losses[f'loss_{part}'] = self.criterion(
                    outputs[f'{part}1'], outputs[f'{part}2']
                )
        match losses:
            case {'loss_global': loss_global, 'loss_local': loss_local}:
                losses['loss'] = self.lam * loss_global + (1 - self.lam) * loss_local
            case {'loss_global': loss} | {'loss_local': loss}:
                losses['loss'] = loss
            case _:
                raise ValueError(
                    'outputs hold no embeddings: expected global1/global2 and/or '
                    'local1/local2'
                )
        return losses
