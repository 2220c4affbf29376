"""The transform base class and elastix's TranslationTransform.

Every transform maps physical points (mm, ITK ``(x, y[, z])`` order) of the fixed image domain to the moving
image domain, ``T(params, x)``, with differentiable torch operations, so that autograd gives ``∂T/∂μ`` and
``∂T/∂x``; :meth:`Transform.jacobian` returns the sparse parameter Jacobian in elastix's layout (values per
output component for the non-zero parameter indices) for the optimizer's parameter estimation.
torch is imported inside the functions (importing this module imports neither torch nor itk).

Source: ``Components/Transforms/TranslationTransform/elxTranslationTransform.hxx``; docs/design.md §E6.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from elastix_bridge.core.parameters import format_numbers

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from elastix_bridge.core.geometry import ImageGeometry

__all__ = ["Transform", "TranslationTransform"]


class Transform:
    """Base class / protocol of the transforms.

    Attributes:
        dimension: space dimension D.
        name: elastix ``Transform`` name written to TransformParameters.
    """

    name: str = ""
    dimension: int

    @property
    def number_of_parameters(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def parameters(self) -> "torch.Tensor":
        """Initial parameters, ``Tensor[P]`` float64 on CPU (identity transform)."""
        import torch

        return torch.zeros(self.number_of_parameters, dtype=torch.float64)

    def transform_points(self, params: "torch.Tensor", points: "torch.Tensor") -> "torch.Tensor":
        """Map physical points: ``(P,)``, ``(N, D)`` mm → ``(N, D)`` mm (differentiable in both)."""
        raise NotImplementedError

    def transform_grid(self, params: "torch.Tensor", geometry: "ImageGeometry") -> "torch.Tensor":
        """Map every voxel centre of ``geometry``: ``(∏size, D)`` mm, x fastest (as ``voxel_centres``).

        Transforms that can do better on a whole grid (a separable B-spline) override this.
        """
        import torch

        return self.transform_points(params, torch.from_numpy(geometry.voxel_centres()))

    def jacobian(self, points: "torch.Tensor",
                 params: "torch.Tensor | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse parameter Jacobian ``(values (N, D, nnz), indices (N, nnz) int64)`` at ``params``
        (None: the identity parameters; transforms linear in their parameters ignore it)."""
        raise NotImplementedError

    def scales(self) -> "torch.Tensor":
        """Default optimizer (squared) scales, ``Tensor[P]`` float64 (docs/design.md §E6.3): all ones."""
        import torch

        return torch.ones(self.number_of_parameters, dtype=torch.float64)

    def parameter_map(self, params: torch.Tensor | None = None) -> dict[str, list[str]]:
        """Transform-specific TransformParameters keys (docs/design.md §E10.1)."""
        if params is None:
            params = self.parameters
        return {
            "Transform": [self.name],
            "NumberOfParameters": [str(self.number_of_parameters)],
            "TransformParameters": format_numbers(params),
        }

    def _check(self, params, points):
        if points.ndim != 2 or points.shape[1] != self.dimension:
            raise ValueError(f"points must have shape (N, {self.dimension}), got {tuple(points.shape)}")
        if params.ndim != 1 or params.shape[0] != self.number_of_parameters:
            raise ValueError(
                f"params must have shape ({self.number_of_parameters},), got {tuple(params.shape)}"
            )


class TranslationTransform(Transform):
    """``T(x) = x + t``; parameters ``t_0 … t_{D−1}`` (mm).

    Source: ``Components/Transforms/TranslationTransform/elxTranslationTransform.hxx``; docs/design.md §E6.1.
    """

    name = "TranslationTransform"

    def __init__(self, dimension: int) -> None:
        if dimension < 1:
            raise ValueError(f"dimension must be >= 1, got {dimension}")
        self.dimension = int(dimension)

    @property
    def number_of_parameters(self) -> int:
        return self.dimension

    def transform_points(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``(D,)`` translation, ``(N, D)`` points (mm) → ``(N, D)`` mapped points (mm)."""
        self._check(params, points)
        return points + params.to(points.device)

    def jacobian(self, points: torch.Tensor, params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``values (N, D, D)`` = identity, ``indices (N, D)`` = ``0..D−1`` (independent of ``params``)."""
        import torch

        n, d = points.shape
        eye = torch.eye(d, dtype=points.dtype, device=points.device)
        idx = torch.arange(d, device=points.device)
        return eye.expand(n, d, d).clone(), idx.expand(n, d).clone()
