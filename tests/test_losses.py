import math

import pytest
import torch
from torch import Tensor

from glcgeo.losses import GLCNetLoss


def direct_nt_xent(
    z1: Tensor, z2: Tensor, temperature: float, decoupled: bool
) -> float:
    """NT-Xent written out element by element over the 2N embeddings."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        similarity = [float(z[i] @ z[k]) / temperature for k in range(2 * n)]
        denominator = sum(
            math.exp(similarity[k])
            for k in range(2 * n)
            if k != i and not (decoupled and k == positive)
        )
        total += -similarity[positive] + math.log(denominator)
    return total / (2 * n)


@pytest.fixture
def embeddings() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(rows, 8, generator=generator)
        for name, rows in [('global1', 3), ('global2', 3), ('local1', 6), ('local2', 6)]
    }


@pytest.mark.parametrize('decoupled', [False, True])
@pytest.mark.parametrize('temperature', [0.5, 0.1])
def test_parts_match_direct_formula(
    embeddings: dict[str, Tensor], decoupled: bool, temperature: float
) -> None:
    losses = GLCNetLoss(temperature=temperature, decoupled=decoupled)(embeddings)
    for part in ('global', 'local'):
        expected = direct_nt_xent(
            embeddings[f'{part}1'], embeddings[f'{part}2'], temperature, decoupled
        )
        assert losses[f'loss_{part}'].item() == pytest.approx(expected, rel=1e-5)


def test_decoupled_differs_from_standard(embeddings: dict[str, Tensor]) -> None:
    standard = GLCNetLoss(decoupled=False)(embeddings)['loss']
    decoupled = GLCNetLoss(decoupled=True)(embeddings)['loss']
    assert decoupled < standard


@pytest.mark.parametrize('lam', [0.0, 0.3, 0.5, 1.0])
def test_total_weights_the_parts(embeddings: dict[str, Tensor], lam: float) -> None:
    losses = GLCNetLoss(lam=lam)(embeddings)
    expected = lam * losses['loss_global'] + (1 - lam) * losses['loss_local']
    torch.testing.assert_close(losses['loss'], expected)


@pytest.mark.parametrize('part', ['global', 'local'])
def test_single_part_is_the_total(embeddings: dict[str, Tensor], part: str) -> None:
    outputs = {k: v for k, v in embeddings.items() if k.startswith(part)}
    losses = GLCNetLoss(lam=0.3)(outputs)
    assert set(losses) == {'loss', f'loss_{part}'}
    torch.testing.assert_close(losses['loss'], losses[f'loss_{part}'])


def test_no_embeddings() -> None:
    with pytest.raises(ValueError, match='no embeddings'):
        GLCNetLoss()({})


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'temperature': 0.0}, 'temperature'),
        ({'temperature': -0.5}, 'temperature'),
        ({'lam': -0.1}, 'lam'),
        ({'lam': 1.5}, 'lam'),
    ],
)
def test_invalid_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GLCNetLoss(**kwargs)


def test_gradient_flows(embeddings: dict[str, Tensor]) -> None:
    leaves = {k: v.clone().requires_grad_(True) for k, v in embeddings.items()}
    GLCNetLoss()(leaves)['loss'].backward()
    for leaf in leaves.values():
        assert leaf.grad is not None
        assert leaf.grad.abs().sum() > 0
