"""The core's fusion operators: concatenation, mean, gated, bilinear, tensor, low-rank tensor and FiLM.

Each one handles modalities absent for some samples (``present`` masks) in the way that suits its algebra:
sums skip them, products use their identity, tensor fusions use the zero vector, FiLM the identity map.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transmodal.builtin.params import (
    BilinearParams,
    ConcatParams,
    FiLMParams,
    GatedParams,
    LowRankTensorParams,
    MeanParams,
    TensorParams,
)
from transmodal.errors import ConfigError
from transmodal.fusion import Fusion, presence


class ConcatFusion(Fusion):
    """Concatenate modality features (absent ones as zeros), optionally through a projection MLP."""

    def __init__(self, input_dims: dict[str, int], hidden: int | None, dropout: float, batchnorm: bool = False) -> None:
        super().__init__(input_dims)
        width = sum(self.input_dims.values())
        self.projection = None
        if hidden is not None:
            norm = [nn.BatchNorm1d(hidden)] if batchnorm else []
            self.projection = nn.Sequential(nn.Linear(width, hidden), *norm, nn.ReLU(), nn.Dropout(dropout))
        self.output_dim = hidden or width

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        parts = [features[m] * presence(features, present, m) for m in self.modalities]
        joined = torch.cat(parts, dim=1)
        return self.projection(joined) if self.projection is not None else joined


def build_concat(params: ConcatParams, input_dims: dict[str, int]) -> ConcatFusion:
    return ConcatFusion(input_dims, params.hidden, params.dropout, params.batchnorm)


class MeanFusion(Fusion):
    """Project every modality to one width and average over the modalities each sample has."""

    def __init__(self, input_dims: dict[str, int], dim: int) -> None:
        super().__init__(input_dims)
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.input_dims.items()})
        self.output_dim = dim

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        total = 0.0
        count = 0.0
        for modality in self.modalities:
            mask = presence(features, present, modality)
            total = total + self.projections[modality](features[modality]) * mask
            count = count + mask
        return total / count.clamp(min=1.0)


def build_mean(params: MeanParams, input_dims: dict[str, int]) -> MeanFusion:
    return MeanFusion(input_dims, params.dim)


class GatedFusion(Fusion):
    """Gated multimodal unit (Arevalo et al., 2017) for any number of modalities.

    ``h = sum_m z_m * tanh(W_m x_m)`` with ``z_m = sigmoid(V_m [x_1; ...; x_M])``: every gate sees every
    modality, so one modality can decide how much another is trusted. An absent modality is a zero vector
    in the gates' input and adds no term to the sum.
    """

    def __init__(self, input_dims: dict[str, int], dim: int) -> None:
        super().__init__(input_dims)
        self.projections = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in self.input_dims.items()})
        self.gates = nn.Linear(sum(self.input_dims.values()), len(self.modalities) * dim)
        self.output_dim = dim

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        masks = [presence(features, present, m) for m in self.modalities]
        joined = torch.cat([features[m] * mask for m, mask in zip(self.modalities, masks)], dim=1)
        gates = torch.sigmoid(self.gates(joined)).view(joined.shape[0], len(self.modalities), self.output_dim)
        fused = 0.0
        for index, (modality, mask) in enumerate(zip(self.modalities, masks)):
            fused = fused + gates[:, index] * torch.tanh(self.projections[modality](features[modality])) * mask
        return fused


def build_gated(params: GatedParams, input_dims: dict[str, int]) -> GatedFusion:
    return GatedFusion(input_dims, params.dim)


class BilinearFusion(Fusion):
    """Low-rank bilinear pooling (MLB, Kim et al., 2017): ``P (tanh(U_1 x_1) * ... * tanh(U_M x_M))``.

    The Hadamard product of projections is a rank-constrained bilinear (for M > 2, multilinear) form at the
    cost of M linear maps. An absent modality's factor is all ones, the product's identity, so what the other
    modalities bring is kept instead of being multiplied away.
    """

    def __init__(self, input_dims: dict[str, int], rank: int, dim: int, dropout: float) -> None:
        super().__init__(input_dims)
        self.projections = nn.ModuleDict({m: nn.Linear(d, rank) for m, d in self.input_dims.items()})
        self.output = nn.Sequential(nn.Dropout(dropout), nn.Linear(rank, dim))
        self.output_dim = dim

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        product = 1.0
        for modality in self.modalities:
            mask = presence(features, present, modality)
            factor = torch.tanh(self.projections[modality](features[modality]))
            product = product * (factor * mask + (1.0 - mask))
        return self.output(product)


def build_bilinear(params: BilinearParams, input_dims: dict[str, int]) -> BilinearFusion:
    return BilinearFusion(input_dims, params.rank, params.dim, params.dropout)


def _extended(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[x; 1]`` with x zeroed for absent samples: the 1 keeps the lower-order terms of the others."""
    return torch.cat([features * mask, mask.new_ones(mask.shape[0], 1)], dim=1)


class TensorFusion(Fusion):
    """Tensor fusion (Zadeh et al., 2017): the outer product of ``[x_m; 1]`` over modalities, flattened.

    The appended 1 makes the product hold every unimodal and cross-modal term at once, and lets an absent
    modality (a zero vector) leave the other modalities' terms intact. Its size is the product of the widths,
    so it is checked against ``max_size`` before the following layer is allocated.
    """

    def __init__(
        self, input_dims: dict[str, int], project: int | None, dim: int, max_size: int, dropout: float
    ) -> None:
        super().__init__(input_dims)
        widths = {m: (project if project is not None else d) for m, d in self.input_dims.items()}
        size = math.prod(width + 1 for width in widths.values())
        if size > max_size:
            raise ConfigError(_tensor_too_large(widths, size, max_size))
        self.projections = (
            nn.ModuleDict({m: nn.Linear(d, project) for m, d in self.input_dims.items()})
            if project is not None else None
        )
        self.output = nn.Sequential(nn.Dropout(dropout), nn.Linear(size, dim), nn.ReLU())
        self.product_size = size
        self.output_dim = dim

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        product: torch.Tensor | None = None
        for modality in self.modalities:
            vector = features[modality]
            if self.projections is not None:
                vector = self.projections[modality](vector)
            extended = _extended(vector, presence(features, present, modality))
            product = extended if product is None else (product.unsqueeze(2) * extended.unsqueeze(1)).flatten(1)
        assert product is not None
        return self.output(product)


def _tensor_too_large(widths: dict[str, int], size: int, max_size: int) -> str:
    shown = " x ".join(f"({m} {w} + 1)" for m, w in widths.items())
    count = len(widths)
    fitting = round(max_size ** (1.0 / count)) - 1
    while fitting > 0 and (fitting + 1) ** count > max_size:
        fitting -= 1
    hint = f"set model.fusion.project={fitting} (or smaller)" if fitting >= 1 else "use fewer modalities"
    return (
        f"model.fusion (tensor): the outer product {shown} has {size:,} entries per sample, more than "
        f"max_size={max_size:,}. To fix it, {hint} so each modality is projected before the product, raise "
        f"model.fusion.max_size, or use low-rank-tensor, which never forms the product."
    )


def build_tensor(params: TensorParams, input_dims: dict[str, int]) -> TensorFusion:
    return TensorFusion(input_dims, params.project, params.dim, params.max_size, params.dropout)


class LowRankTensorFusion(Fusion):
    """Low-rank multimodal fusion (Liu et al., 2018): tensor fusion whose weight is a sum of ``rank`` outer
    products of per-modality factors, computed without ever forming the product.

    ``h = sum_r w_r * prod_m ([x_m; 1] W_m^(r)) + b``. Every factor is a registered parameter (MultiBench keeps
    them in a plain list, so they are neither trained nor saved). Absent modalities are zero vectors, as in
    tensor fusion.
    """

    def __init__(self, input_dims: dict[str, int], rank: int, dim: int) -> None:
        super().__init__(input_dims)
        self.factors = nn.ParameterDict({
            m: nn.Parameter(torch.randn(rank, d + 1, dim) / math.sqrt(d + 1)) for m, d in self.input_dims.items()
        })
        self.rank_weights = nn.Parameter(torch.full((rank,), 1.0 / math.sqrt(rank)))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.output_dim = dim

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        product: torch.Tensor | float = 1.0
        for modality in self.modalities:
            extended = _extended(features[modality], presence(features, present, modality))
            product = product * torch.einsum("bi,rio->rbo", extended, self.factors[modality])
        assert isinstance(product, torch.Tensor)
        return torch.einsum("r,rbo->bo", self.rank_weights, product) + self.bias


def build_low_rank_tensor(params: LowRankTensorParams, input_dims: dict[str, int]) -> LowRankTensorFusion:
    return LowRankTensorFusion(input_dims, params.rank, params.dim)


class FiLMFusion(Fusion):
    """Feature-wise linear modulation (Perez et al., 2018): one modality scales and shifts the others.

    The output is the modulated features of every other modality, concatenated in sorted order. ``gamma`` is
    parameterised as ``1 + delta`` and both are masked by the conditioning modality's presence, so without it
    the operator is exactly the identity. An absent modulated modality is zero, leaving ``beta(c)``: the
    conditioning modality still informs the prediction.
    """

    def __init__(self, input_dims: dict[str, int], conditioning: str) -> None:
        super().__init__(input_dims)
        if conditioning not in self.input_dims:
            raise ConfigError(
                f"model.fusion.conditioning: '{conditioning}' is not a modality of this model "
                f"({', '.join(self.modalities)}); set it to the modality that should condition the others."
            )
        self.conditioning = conditioning
        self.targets = [m for m in self.modalities if m != conditioning]
        if not self.targets:
            raise ConfigError(
                f"model.fusion (film): '{conditioning}' is the model's only modality, so there is nothing for it "
                f"to condition; add a second encoder or use another fusion."
            )
        width = self.input_dims[conditioning]
        self.generators = nn.ModuleDict({m: nn.Linear(width, 2 * self.input_dims[m]) for m in self.targets})
        self.output_dim = sum(self.input_dims[m] for m in self.targets)

    def forward(self, features, present=None, token_masks=None) -> torch.Tensor:
        condition = features[self.conditioning]
        conditioned = presence(features, present, self.conditioning)
        parts = []
        for modality in self.targets:
            delta, beta = self.generators[modality](condition).chunk(2, dim=1)
            target = features[modality] * presence(features, present, modality)
            parts.append((1.0 + delta * conditioned) * target + beta * conditioned)
        return torch.cat(parts, dim=1)


def build_film(params: FiLMParams, input_dims: dict[str, int]) -> FiLMFusion:
    return FiLMFusion(input_dims, params.conditioning)
