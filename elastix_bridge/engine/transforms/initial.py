"""Initial transforms: TransformParameters maps read back as transforms, chains, and composition.

elastix runs a sequence of parameter maps as sequential registrations: stage k starts from the
final transform of stages 0..k−1 (its *initial transform*), combined with its own transform by
``HowToCombineTransforms`` (docs/design.md §E1.7, ``Common/Transforms/itkAdvancedCombinationTransform.hxx``)::

    Compose (default):  T(x) = T_cur(T_init(x))          parameter Jacobian of T_cur at T_init(x)
    Add:                T(x) = T_cur(x) + T_init(x) − x   parameter Jacobian of T_cur at x

All points are physical (mm, ITK x, y, z order); only the current transform's parameters are
optimised, the initial transform is evaluated without gradients.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping, Sequence

import torch

from elastix_bridge.core.parameters import ParameterMap, as_parameter_map
from elastix_bridge.engine.components import UnsupportedComponentError, component
from elastix_bridge.engine.transforms.base import Transform

__all__ = ["ComposedTransform", "TransformChain", "transform_from_parameter_map"]


def transform_from_parameter_map(pmap: ParameterMap | Mapping[str, Any]) -> tuple[Transform, torch.Tensor]:
    """The transform and parameters a TransformParameters map describes (what transformix applies).

    Args:
        pmap: :class:`elastix_bridge.core.parameters.ParameterMap` (or dict of string lists) with
            ``Transform``, ``TransformParameters`` and the transform's own keys (``GridSize`` …,
            ``CenterOfRotationPoint`` …).

    Returns:
        ``(transform, params)``: the transform its registered ``read`` builds (a transform of
        :mod:`elastix_bridge.engine.transforms.base`, :mod:`~elastix_bridge.engine.transforms.bspline` or
        :mod:`~elastix_bridge.engine.transforms.linear`) and its ``Tensor[P]`` float64 parameters.

    Raises:
        UnsupportedComponentError: a transform the bridge engine does not know (with the supported list).
        ValueError: inconsistent keys.

    Source: docs/design.md §E10.1, §E10.3.
    """
    pm = as_parameter_map(pmap)
    name = pm.get("Transform", default="AffineTransform")  # elastix's default when absent (§E1.7)
    try:
        read = component("Transform", name).trait("read")
    except UnsupportedComponentError as error:
        raise UnsupportedComponentError(f"in an initial TransformParameters map: {error}") from None
    return read(pm)


class TransformChain:
    """The final transform of a sequence of TransformParameters maps, as a function of points.

    Args:
        maps: the maps in order (first = earliest stage); map i's initial transform is maps 0..i−1, and
            its ``HowToCombineTransforms`` says how the two combine.

    Raises:
        ValueError: see :func:`transform_from_parameter_map`.
    """

    def __init__(self, maps: Sequence) -> None:
        self._last = None  # points -> points of the chain so far: each stage is composed onto it
        for m in maps:
            pm = as_parameter_map(m)
            transform, params = transform_from_parameter_map(pm)
            if self._last is not None:
                transform = ComposedTransform(transform, self._last,
                                              pm.get("HowToCombineTransforms", default="Compose"))
            self._last = partial(transform.transform_points, params)
        if self._last is None:
            raise ValueError("an initial transform chain needs at least one TransformParameters map")

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """Map physical points ``(N, D)`` (mm) through the whole chain; no gradient."""
        with torch.no_grad():
            return self._last(points)


class ComposedTransform(Transform):
    """The current stage's transform combined with a fixed initial transform (docs/design.md §E1.7).

    Behaves as the current transform for the optimizer (same parameters, scales and
    TransformParameters keys); points are mapped through the initial transform as
    ``HowToCombineTransforms`` says.

    Args:
        current: the transform being optimised.
        initial: callable ``(N, D) → (N, D)`` (e.g. a :class:`TransformChain`), evaluated without gradient.
        how_to_combine: ``"Compose"`` or ``"Add"`` (anything else is Add, as elastix).
    """

    def __init__(self, current: Transform, initial: Callable[[torch.Tensor], torch.Tensor],
                 how_to_combine: str = "Compose") -> None:
        self.current = current
        self.initial = initial
        self.compose = how_to_combine == "Compose"
        self.dimension = current.dimension
        self.name = current.name

    @property
    def number_of_parameters(self) -> int:
        return self.current.number_of_parameters

    @property
    def parameters(self) -> torch.Tensor:
        return self.current.parameters

    def transform_points(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``T_cur(T_init(x))`` (Compose) or ``T_cur(x) + T_init(x) − x`` (Add); differentiable in ``params``."""
        moved = self.initial(points.detach()).to(points.dtype)
        if self.compose:
            return self.current.transform_points(params, moved)
        return self.current.transform_points(params, points) + moved - points.detach()

    def jacobian(self, points: torch.Tensor, params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameter Jacobian of the current transform at ``T_init(x)`` (Compose) or ``x`` (Add)."""
        at = self.initial(points).to(points.dtype) if self.compose else points
        return self.current.jacobian(at, params)

    def scales(self) -> torch.Tensor:
        return self.current.scales()

    def parameter_map(self, params: torch.Tensor | None = None) -> dict[str, list[str]]:
        return self.current.parameter_map(params)

    def __getattr__(self, name: str) -> Any:  # grid, upsample, center ... of the current transform
        return getattr(self.__dict__["current"], name)
