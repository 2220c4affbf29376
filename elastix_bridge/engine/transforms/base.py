"""The transform base class, elastix's TranslationTransform (and its TransformParameters reader), and ITK's
point arithmetic mode.

Every transform maps physical points (mm, ITK ``(x, y[, z])`` order) of the fixed image domain to the moving
image domain, ``T(params, x)``, with differentiable torch operations, so that autograd gives ``∂T/∂μ`` and
``∂T/∂x``; :meth:`Transform.jacobian` returns the sparse parameter Jacobian in elastix's layout (values per
output component for the non-zero parameter indices) for the optimizer's parameter estimation.
Inside :func:`itk_point_arithmetic` transforms that can map points with ITK's exact operation order do so.

Source: ``Components/Transforms/TranslationTransform/elxTranslationTransform.hxx``; docs/design.md §E6.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.core.parameters import ParameterMap, format_numbers

__all__ = ["Transform", "TranslationTransform", "translation_from_parameter_map", "read_transform_parameters",
           "itk_point_arithmetic", "uses_itk_point_arithmetic"]

_ITK_ORDER = contextvars.ContextVar("itk_order", default=False)


@contextlib.contextmanager
def itk_point_arithmetic() -> Iterator[None]:
    """Within this block linear transforms map points with ITK's exact operation order.

    For decisions elastix takes on transformed points, where one rounding step can flip the
    outcome (the B-spline grid size fitted to a domain moved by an initial transform).
    """
    token = _ITK_ORDER.set(True)
    try:
        yield
    finally:
        _ITK_ORDER.reset(token)


def uses_itk_point_arithmetic() -> bool:
    """Whether the caller is inside :func:`itk_point_arithmetic`."""
    return _ITK_ORDER.get()


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
    def parameters(self) -> torch.Tensor:
        """Initial parameters, ``Tensor[P]`` float64 on CPU (identity transform)."""
        return torch.zeros(self.number_of_parameters, dtype=torch.float64)

    def transform_points(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Map physical points: ``(P,)``, ``(N, D)`` mm → ``(N, D)`` mm (differentiable in both)."""
        raise NotImplementedError

    def transform_grid(self, params: torch.Tensor, geometry: ImageGeometry) -> torch.Tensor:
        """Map every voxel centre of ``geometry``: ``(∏size, D)`` mm, x fastest (as ``voxel_centres``).

        Transforms that can do better on a whole grid (a separable B-spline) override this.
        """
        return self.transform_points(params, torch.from_numpy(geometry.voxel_centres()))

    def jacobian(self, points: torch.Tensor,
                 params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse parameter Jacobian ``(values (N, D, nnz), indices (N, nnz) int64)`` at ``params``
        (None: the identity parameters; transforms linear in their parameters ignore it)."""
        raise NotImplementedError

    def scales(self) -> torch.Tensor:
        """Default optimizer (squared) scales, ``Tensor[P]`` float64 (docs/design.md §E6.3): all ones."""
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
        n, d = points.shape
        eye = torch.eye(d, dtype=points.dtype, device=points.device)
        idx = torch.arange(d, device=points.device)
        return eye.expand(n, d, d).clone(), idx.expand(n, d).clone()


def read_transform_parameters(pm: ParameterMap, transform: Transform, name: str) -> torch.Tensor:
    """A TransformParameters map's ``TransformParameters`` as ``Tensor[P]`` float64.

    Args:
        pm: the map.
        transform: the transform it describes (its parameter count is checked).
        name: the transform's elastix name, for the message.

    Raises:
        ValueError: a count other than ``transform.number_of_parameters``.
    """
    params = torch.tensor([float(v) for v in pm.values("TransformParameters")], dtype=torch.float64)
    if len(params) != transform.number_of_parameters:
        raise ValueError(f"the {name} map has {len(params)} TransformParameters; its grid/dimension needs "
                         f"{transform.number_of_parameters}")
    return params


def translation_from_parameter_map(pm: ParameterMap) -> tuple[TranslationTransform, torch.Tensor]:
    """``TranslationTransform`` of a TransformParameters map: D parameters (mm) (docs/design.md §E10.3)."""
    transform = TranslationTransform(len(pm.values("TransformParameters")))
    return transform, read_transform_parameters(pm, transform, "TranslationTransform")
