"""elastix's linear transforms: Euler, Similarity, Affine (their maps, Jacobians and default scales).

All transforms are *centred*: ``T(x) = M·(x − c) + c + t`` (offset ``t + c − M·c``) with the centre of rotation
``c`` (a fixed parameter, mm) and the translation ``t`` (mm) part of the parameters.  Points are physical (mm), ITK
``(x, y[, z])`` order; angles in radians.  Parameter layouts (elastix order, docs/design.md §E6.1):

* ``EulerTransform`` 2-D: ``[θ, t_x, t_y]``, ``M = R(θ)``;
* ``EulerTransform`` 3-D: ``[θ_x, θ_y, θ_z, t_x, t_y, t_z]``, ``M = R_z·R_x·R_y`` (``R_z·R_y·R_x`` with
  ``compute_zyx``);
* ``SimilarityTransform`` 2-D: ``[σ, θ, t_x, t_y]``, ``M = σ·R(θ)``;
* ``SimilarityTransform`` 3-D: ``[v_x, v_y, v_z, t_x, t_y, t_z, σ]``, ``M = σ·R(versor)``, ``w = √(1 − ‖v‖²)``;
* ``AffineTransform`` (any D): ``[a_00, a_01, …, a_(D−1)(D−1), t_0, …, t_(D−1)]`` (matrix row-major), ``M = A``.

All start at the identity (``θ = 0``, ``v = 0``, ``σ = 1``, ``A = I``, ``t = 0``).
:func:`linear_transform_from_parameter_map` reads a TransformParameters map back (the transformix side).

elastix's ``BeforeRegistration`` of these transforms (``InitializeTransform`` then ``SetScales``) is in
:mod:`elastix_bridge.engine.transforms.initializers` (centre of rotation, initial translation, image moments),
:mod:`elastix_bridge.engine.transforms.optimizer_scales` (``Scales``, ``AutomaticScalesEstimation``) and, in
one call, :func:`elastix_bridge.engine.transforms.linear_setup.make_linear_transform`.

Sources (docs/design.md §E6.1, §E6.3, §E10.1): ``Components/Transforms/EulerTransform/elxEulerTransform.hxx``,
``Components/Transforms/SimilarityTransform/elxSimilarityTransform.hxx``,
``Components/Transforms/AdvancedAffineTransform/elxAdvancedAffineTransform.hxx``,
``Common/Transforms/itkAdvanced{Rigid2D,Euler3D,Similarity2D,Similarity3D,VersorTransform,MatrixOffsetTransformBase}``
``Transform.hxx``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from elastix_bridge.engine.components import component, names
from elastix_bridge.core.geometry import matrix_times_points
from elastix_bridge.core.parameters import ParameterError, ParameterMap, as_parameter_map, format_numbers
from elastix_bridge.engine.transforms.base import Transform, uses_itk_point_arithmetic

__all__ = [
    "CenteredLinearTransform",
    "EulerTransform",
    "SimilarityTransform",
    "AffineTransform",
    "new_linear_transform",
    "linear_component",
    "linear_transform_from_parameter_map",
]

#: default optimizer scale of rotation / matrix parameters (elastix ``SetScales``).
_ROTATION_SCALE = 100000.0
#: default optimizer scale of the isotropic scaling parameter σ of the SimilarityTransform.
_SCALING_SCALE = 10000.0
#: Similarity-3D: ``‖v‖ ≥ 1 − ε`` → ``v ← v / (‖v‖·(1 + ε))`` (``itkAdvancedSimilarity3DTransform.hxx``).
_VERSOR_EPSILON = 1e-10


def _rot2(c, s):
    """``[[c, −s], [s, c]]`` as a torch ``(2, 2)`` tensor (differentiable)."""
    return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])


def _euler3_factors(angles):
    """``R_x, R_y, R_z`` and their angle derivatives for ``angles = (θ_x, θ_y, θ_z)`` (torch, ``(3, 3)`` each)."""
    one = torch.ones_like(angles[0])
    zero = torch.zeros_like(angles[0])
    c = torch.cos(angles)
    s = torch.sin(angles)

    def m(rows: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r) for r in rows])

    rx = m([[one, zero, zero], [zero, c[0], -s[0]], [zero, s[0], c[0]]])
    ry = m([[c[1], zero, s[1]], [zero, one, zero], [-s[1], zero, c[1]]])
    rz = m([[c[2], -s[2], zero], [s[2], c[2], zero], [zero, zero, one]])
    rxd = m([[zero, zero, zero], [zero, -s[0], -c[0]], [zero, c[0], -s[0]]])
    ryd = m([[-s[1], zero, c[1]], [zero, zero, zero], [-c[1], zero, -s[1]]])
    rzd = m([[-s[2], -c[2], zero], [c[2], -s[2], zero], [zero, zero, zero]])
    return rx, ry, rz, rxd, ryd, rzd


class CenteredLinearTransform(Transform):
    """Base class of the centred linear transforms ``T(x) = M(μ)·(x − c) + c + t(μ)``.

    Subclasses define :meth:`matrix` and :meth:`_matrix_derivatives` and the index sets below.

    Attributes:
        dimension: space dimension D.
        center: centre of rotation ``c`` (mm, ``np.float64[D]``, ITK order); a fixed parameter, written as
            ``CenterOfRotationPoint``.
        name: elastix ``Transform`` name.
        matrix_indices: parameter indices that enter ``M`` (order of :meth:`_matrix_derivatives`).
        translation_indices: parameter indices of ``t_0 … t_{D−1}``.
        rotation_part: number of leading parameters that get the rotation scale (Euler/Affine ``Scales`` rule).
    """

    matrix_indices: tuple = ()
    translation_indices: tuple = ()
    rotation_part: int = 0

    def __init__(self, dimension: int, center: np.ndarray | Sequence[float] | None = None) -> None:
        self.dimension = int(dimension)
        self.center = np.zeros(self.dimension) if center is None else center

    @property
    def center(self) -> np.ndarray:
        return self._center

    @center.setter
    def center(self, value: np.ndarray | Sequence[float]) -> None:
        c = np.asarray(value, dtype=np.float64).reshape(-1)
        if c.shape != (self.dimension,):
            raise ValueError(f"center must have {self.dimension} values, got {c.size}")
        self._center = c.copy()

    @property
    def number_of_parameters(self) -> int:
        return len(self.matrix_indices) + len(self.translation_indices)

    # ------------------------------------------------------------------ parameters
    def _identity(self) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def parameters(self) -> torch.Tensor:
        """Identity parameters (elastix ``SetIdentity``), ``Tensor[P]`` float64 on CPU."""
        return torch.tensor(self._identity(), dtype=torch.float64)

    def translation(self, params: torch.Tensor) -> torch.Tensor:
        """The translation part ``t`` (mm) of ``params``, ``(D,)``."""
        return params[list(self.translation_indices)]

    def with_translation(self, params: torch.Tensor | np.ndarray,
                         translation: np.ndarray | Sequence[float] | torch.Tensor) -> torch.Tensor:
        """A copy of ``params`` (``(P,)``) with the translation part replaced by ``translation`` (``(D,)``, mm)."""
        out = torch.as_tensor(params, dtype=torch.float64).clone()
        out[list(self.translation_indices)] = torch.as_tensor(
            np.asarray(translation, dtype=np.float64).reshape(-1), dtype=out.dtype, device=out.device)
        return out

    # ------------------------------------------------------------------ maps
    def matrix(self, params: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``M(μ)``, ``(D, D)`` torch tensor, differentiable in ``params``."""
        raise NotImplementedError

    def _matrix_derivatives(self, params: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``∂M/∂μ_k`` for ``k`` in :attr:`matrix_indices` as elastix computes them, ``(K, D, D)``."""
        raise NotImplementedError

    def offset(self, params: torch.Tensor) -> np.ndarray:
        """ITK offset ``t + c − M·c`` (mm, ``np.float64[D]``), so that ``T(x) = M·x + offset``.

        Computed in ITK's order (``ComputeOffset``): ``o_i = t_i + c_i``, then ``o_i −= M_ij·c_j`` for each ``j``.
        """
        p = torch.as_tensor(params, dtype=torch.float64).detach().cpu()
        m = self.matrix(p).numpy()
        out = self.translation(p).numpy() + self.center
        for j in range(m.shape[1]):
            out = out - m[:, j] * self.center[j]
        return out

    def _map(self, params, points):
        if uses_itk_point_arithmetic():
            # ITK's TransformPoint arithmetic (MatrixOffsetTransformBase): M·x summed left to right, then the
            # offset; no gradient (used only for decisions elastix takes on transformed points).
            m = self.matrix(params).detach().cpu().numpy()
            return points.new_tensor(matrix_times_points(m, points.detach().cpu().numpy()) + self.offset(params))
        # elastix's analytic Jacobian is dM/dμ·(x − c): this form's autograd derivative matches it
        c = points.new_tensor(self.center)
        return (points - c) @ self.matrix(params).T + c + self.translation(params)

    def transform_points(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``T(x) = M·(x − c) + c + t``.

        Args:
            params: ``(P,)`` parameters (elastix order, see the module docstring).
            points: ``(N, D)`` physical points (mm), same device as ``params``.

        Returns:
            ``(N, D)`` mapped points (mm), dtype = promotion of the params and points dtypes; differentiable in
            both.

        Raises:
            ValueError: wrong shapes.
        """
        self._check(params, points)
        dtype = torch.promote_types(params.dtype, points.dtype)
        return self._map(params.to(device=points.device, dtype=dtype), points.to(dtype))

    def jacobian(self, points: torch.Tensor,
                 params: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameter Jacobian ``∂T/∂μ`` at ``params`` in elastix's layout (all parameters are non-zero).

        Note: for Euler and Similarity the Jacobian depends on the parameters; elastix evaluates it at the
        *current* parameters (``GetJacobian`` of the transform in its current state), so pass them.  Under
        ``HowToCombineTransforms Compose`` elastix evaluates it at ``T_init(x)`` (the caller maps the points).

        Args:
            points: ``(N, D)`` physical points (mm).
            params: ``(P,)`` parameters; default the identity (:attr:`parameters`).

        Returns:
            ``values (N, D, P)`` (mm per parameter unit) and ``indices (N, P)`` int64 = ``0 … P−1``.

        Source: ``GetJacobian`` of ``itkAdvanced{Rigid2D,Euler3D,Similarity2D,Similarity3D,MatrixOffsetTransformBase}``
        ``Transform.hxx``; docs/design.md §E6.1.
        """
        if params is None:
            params = self.parameters
        params = torch.as_tensor(params)
        self._check(params, points)
        dtype = torch.promote_types(params.dtype, points.dtype)
        p = params.detach().to(device=points.device, dtype=dtype)
        x = points.detach().to(dtype) - points.new_tensor(self.center).to(dtype)
        n, d = x.shape
        values = x.new_zeros(n, d, self.number_of_parameters)
        dm = self._matrix_derivatives(p)  # (K, D, D)
        values[:, :, list(self.matrix_indices)] = torch.einsum("kij,nj->nik", dm, x)
        ti = torch.as_tensor(self.translation_indices, device=points.device)
        values[:, torch.arange(d, device=points.device), ti] = 1.0
        indices = torch.arange(self.number_of_parameters, device=points.device).expand(n, -1).clone()
        return values, indices

    # ------------------------------------------------------------------ scales / maps
    def scales(self) -> torch.Tensor:
        """elastix's default optimizer (squared) scales, ``Tensor[P]`` float64 (docs/design.md §E6.3)."""
        s = torch.ones(self.number_of_parameters, dtype=torch.float64)
        s[: self.rotation_part] = _ROTATION_SCALE
        return s

    def parameter_map(self, params: torch.Tensor | None = None) -> dict[str, list[str]]:
        """Transform block keys: ``Transform``, ``NumberOfParameters``, ``TransformParameters``,
        ``CenterOfRotationPoint`` (shortest round-trip numbers).

        Source: ``CreateDerivedTransformParameterMap`` of ``elxEulerTransform.hxx``, ``elxSimilarityTransform.hxx``,
        ``elxAdvancedAffineTransform.hxx``; docs/design.md §E10.1.
        """
        out = super().parameter_map(params)
        out["CenterOfRotationPoint"] = format_numbers(self.center)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dimension={self.dimension}, center={self.center.tolist()})"


class EulerTransform(CenteredLinearTransform):
    """elastix ``EulerTransform`` (rigid): 2-D ``[θ, t_x, t_y]``, 3-D ``[θ_x, θ_y, θ_z, t_x, t_y, t_z]``.

    2-D: ``M = [[cos θ, −sin θ], [sin θ, cos θ]]``.  3-D: ``M = R_z·R_x·R_y`` or, with ``compute_zyx``,
    ``R_z·R_y·R_x`` with ``R_x = [[1,0,0],[0,c,−s],[0,s,c]]``, ``R_y = [[c,0,s],[0,1,0],[−s,0,c]]``,
    ``R_z = [[c,−s,0],[s,c,0],[0,0,1]]``.  Angles in radians, translations in mm.

    Args:
        dimension: 2 or 3.
        center: centre of rotation (mm, ``(D,)``), default the origin.
        compute_zyx: 3-D rotation order (``ComputeZYX``).  elastix reads ``ComputeZYX`` only from
            TransformParameters files (transformix); a *registration* always uses (and writes) ``false``.

    Raises:
        ValueError: unsupported dimension, or ``compute_zyx`` in 2-D.

    Source: ``Common/Transforms/itkAdvancedRigid2DTransform.hxx``, ``itkAdvancedEuler3DTransform.hxx``,
    ``Components/Transforms/EulerTransform/elxEulerTransform.hxx``.
    """

    name = "EulerTransform"

    def __init__(self, dimension: int, center: np.ndarray | Sequence[float] | None = None,
                 compute_zyx: bool = False) -> None:
        if dimension not in (2, 3):
            raise ValueError(f"EulerTransform supports dimension 2 or 3, got {dimension}")
        if compute_zyx and dimension != 3:
            raise ValueError("ComputeZYX only exists for the 3-D EulerTransform")
        super().__init__(dimension, center)
        self.compute_zyx = bool(compute_zyx)
        r = 1 if dimension == 2 else 3
        self.rotation_part = r
        self.matrix_indices = tuple(range(r))
        self.translation_indices = tuple(range(r, r + dimension))

    def _identity(self):
        return [0.0] * self.number_of_parameters

    def matrix(self, params: torch.Tensor) -> torch.Tensor:
        if self.dimension == 2:
            return _rot2(torch.cos(params[0]), torch.sin(params[0]))
        rx, ry, rz, *_ = _euler3_factors(params[:3])
        return rz @ ry @ rx if self.compute_zyx else rz @ rx @ ry

    def _matrix_derivatives(self, params):
        if self.dimension == 2:
            c, s = torch.cos(params[0]), torch.sin(params[0])
            return torch.stack([torch.stack([-s, -c]), torch.stack([c, -s])])[None]
        rx, ry, rz, rxd, ryd, rzd = _euler3_factors(params[:3])
        if self.compute_zyx:
            return torch.stack([rz @ ry @ rxd, rz @ ryd @ rx, rzd @ ry @ rx])
        return torch.stack([rz @ rxd @ ry, rz @ rx @ ryd, rzd @ rx @ ry])

    def parameter_map(self, params: torch.Tensor | None = None) -> dict[str, list[str]]:
        """As :meth:`CenteredLinearTransform.parameter_map`, plus ``ComputeZYX "false"/"true"`` in 3-D."""
        out = super().parameter_map(params)
        if self.dimension == 3:
            out["ComputeZYX"] = ["true" if self.compute_zyx else "false"]
        return out


class _ElastixJacobianMap(torch.autograd.Function):
    """Autograd function ``(params, points, transform) -> T(x)`` whose parameter gradient uses elastix's
    ``GetJacobian``.

    Used by the 3-D :class:`SimilarityTransform` so that ``∂(loss)/∂μ = Σ_n J_elastix(x_n)ᵀ·∂loss/∂T(x_n)``, which
    is what elastix's metrics compute (they never differentiate the map itself).
    """

    @staticmethod
    def forward(ctx: Any, params: torch.Tensor, points: torch.Tensor,
                transform: SimilarityTransform) -> torch.Tensor:
        ctx.save_for_backward(params, points)
        ctx.transform = transform
        with torch.no_grad():
            return transform._map(params, points)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        params, points = ctx.saved_tensors
        t = ctx.transform
        grad_params = grad_points = None
        if ctx.needs_input_grad[0]:
            values, _ = t.jacobian(points, params)
            grad_params = torch.einsum("nd,ndp->p", grad.to(values.dtype), values).to(params.dtype)
        if ctx.needs_input_grad[1]:
            grad_points = grad @ t.matrix(params.detach()).to(grad.dtype)
        return grad_params, grad_points, None


class SimilarityTransform(CenteredLinearTransform):
    """elastix ``SimilarityTransform``: rotation, isotropic scaling σ and translation.

    * 2-D: parameters ``[σ, θ, t_x, t_y]``, ``M = σ·R(θ)``.
    * 3-D: parameters ``[v_x, v_y, v_z, t_x, t_y, t_z, σ]``; ``v`` = vector part of a unit quaternion (versor),
      renormalised to ``v/(‖v‖·(1+1e−10))`` when ``‖v‖ ≥ 1 − 1e−10``; ``w = √(1 − ‖v‖²)``;
      ``M = σ·R`` with the quaternion rotation matrix ``R = [[1−2(y²+z²), 2(xy−zw), 2(xz+yw)],
      [2(xy+zw), 1−2(x²+z²), 2(yz−xw)], [2(xz−yw), 2(yz+xw), 1−2(x²+y²)]]``.

    elastix's 3-D ``GetJacobian`` has a typo in ``∂M_01/∂v_z`` (``v_z² − w`` instead of ``v_z² − w²``,
    ``itkAdvancedSimilarity3DTransform.hxx`` ``PrecomputeJacobianOfSpatialJacobian``); it is exact at the identity
    and differs at second order in the rotation.  With ``elastix_jacobian=True`` (default) :meth:`jacobian` *and*
    the parameter gradient of :meth:`transform_points` reproduce elastix's Jacobian (so metric derivatives match
    elastix's); the point gradient and the map itself are exact.  ``elastix_jacobian=False`` gives the exact
    derivative everywhere.

    Args:
        dimension: 2 or 3.
        center: centre of rotation (mm, ``(D,)``).
        elastix_jacobian: see above (3-D only; 2-D is exact in elastix).

    Raises:
        ValueError: unsupported dimension.

    Source: ``Common/Transforms/itkAdvancedSimilarity2DTransform.hxx``, ``itkAdvancedSimilarity3DTransform.hxx``,
    ``itkAdvancedVersorTransform.hxx``, ``Components/Transforms/SimilarityTransform/elxSimilarityTransform.hxx``.
    """

    name = "SimilarityTransform"

    def __init__(self, dimension: int, center: np.ndarray | Sequence[float] | None = None,
                 elastix_jacobian: bool = True) -> None:
        if dimension not in (2, 3):
            raise ValueError(f"SimilarityTransform supports dimension 2 or 3, got {dimension}")
        super().__init__(dimension, center)
        self.elastix_jacobian = bool(elastix_jacobian)
        if dimension == 2:
            self.matrix_indices = (0, 1)
            self.translation_indices = (2, 3)
        else:
            self.matrix_indices = (0, 1, 2, 6)
            self.translation_indices = (3, 4, 5)

    def _identity(self):
        return [1.0, 0.0, 0.0, 0.0] if self.dimension == 2 else [0.0] * 6 + [1.0]

    def scales(self) -> torch.Tensor:
        """Defaults: 2-D ``[10000, 100000, 1, 1]``; 3-D ``[100000 ×3, 1 ×3, 10000]`` (docs/design.md §E6.3)."""
        if self.dimension == 2:
            return torch.tensor([_SCALING_SCALE, _ROTATION_SCALE, 1.0, 1.0], dtype=torch.float64)
        return torch.tensor([_ROTATION_SCALE] * 3 + [1.0] * 3 + [_SCALING_SCALE], dtype=torch.float64)

    @staticmethod
    def versor(params: torch.Tensor) -> torch.Tensor:
        """The (renormalised) versor ``(v_x, v_y, v_z, w)`` of 3-D parameters, torch ``(4,)``."""
        v = params[:3]
        norm = torch.sqrt((v * v).sum())
        v = torch.where(norm >= 1.0 - _VERSOR_EPSILON, v / (norm + _VERSOR_EPSILON * norm), v)
        w = torch.sqrt(1.0 - (v * v).sum())
        return torch.cat([v, w[None]])

    def matrix(self, params: torch.Tensor) -> torch.Tensor:
        if self.dimension == 2:
            return params[0] * _rot2(torch.cos(params[1]), torch.sin(params[1]))
        x, y, z, w = self.versor(params)
        r = torch.stack([
            torch.stack([1.0 - 2.0 * (y * y + z * z), 2.0 * (x * y - z * w), 2.0 * (x * z + y * w)]),
            torch.stack([2.0 * (x * y + z * w), 1.0 - 2.0 * (x * x + z * z), 2.0 * (y * z - x * w)]),
            torch.stack([2.0 * (x * z - y * w), 2.0 * (y * z + x * w), 1.0 - 2.0 * (x * x + y * y)]),
        ])
        return params[6] * r

    def _matrix_derivatives(self, params):
        if self.dimension == 2:
            sigma, c, s = params[0], torch.cos(params[1]), torch.sin(params[1])
            return torch.stack([_rot2(c, s), sigma * torch.stack([torch.stack([-s, -c]), torch.stack([c, -s])])])
        x, y, z, w = self.versor(params)
        sigma = params[6]
        xx, yy, zz, ww = x * x, y * y, z * z, w * w
        xy, xz, xw, yz, yw, zw = x * y, x * z, x * w, y * z, y * w, z * w
        zero = torch.zeros_like(x)
        # elastix's PrecomputeJacobianOfSpatialJacobian, entry [2](0, 1) included (see the class docstring)
        z01 = zz - w if self.elastix_jacobian else zz - ww

        def m(rows: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
            return torch.stack([torch.stack(r) for r in rows])

        d0 = m([[zero, yw + xz, zw - xy], [yw - xz, -2.0 * xw, xx - ww], [zw + xy, ww - xx, -2.0 * xw]])
        d1 = m([[-2.0 * yw, xw + yz, ww - yy], [xw - yz, zero, zw + xy], [yy - ww, zw - xy, -2.0 * yw]])
        d2 = m([[-2.0 * zw, z01, xw - yz], [ww - zz, -2.0 * zw, yw + xz], [xw + yz, yw - xz, zero]])
        factor = sigma * 2.0 / w
        return torch.stack([d0 * factor, d1 * factor, d2 * factor, self.matrix(params) / sigma])

    def transform_points(self, params: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``T(x) = σ·R·(x − c) + c + t`` (see :meth:`CenteredLinearTransform.transform_points`).

        In 3-D with ``elastix_jacobian`` the parameter gradient is elastix's Jacobian (class docstring).
        """
        if self.dimension == 2 or not self.elastix_jacobian:
            return super().transform_points(params, points)
        self._check(params, points)
        dtype = torch.promote_types(params.dtype, points.dtype)
        return _ElastixJacobianMap.apply(params.to(device=points.device, dtype=dtype), points.to(dtype), self)


class AffineTransform(CenteredLinearTransform):
    """elastix ``AffineTransform`` (``AdvancedAffineTransform``), any dimension.

    Parameters ``[a_00, a_01, …, a_0(D−1), a_10, …, a_(D−1)(D−1), t_0, …, t_(D−1)]`` (matrix row-major, then the
    translation in mm); ``M = A``.

    Args:
        dimension: D ≥ 1.
        center: centre of rotation (mm, ``(D,)``).

    Source: ``Common/Transforms/itkAdvancedMatrixOffsetTransformBase.hxx`` (``SetParameters``, ``GetJacobian``),
    ``Components/Transforms/AdvancedAffineTransform/elxAdvancedAffineTransform.hxx``.
    """

    name = "AffineTransform"

    def __init__(self, dimension: int, center: np.ndarray | Sequence[float] | None = None) -> None:
        if dimension < 1:
            raise ValueError(f"dimension must be >= 1, got {dimension}")
        super().__init__(dimension, center)
        d2 = dimension * dimension
        self.rotation_part = d2
        self.matrix_indices = tuple(range(d2))
        self.translation_indices = tuple(range(d2, d2 + dimension))

    def _identity(self):
        return np.eye(self.dimension).reshape(-1).tolist() + [0.0] * self.dimension

    def matrix(self, params: torch.Tensor) -> torch.Tensor:
        d = self.dimension
        return params[: d * d].reshape(d, d)

    def _matrix_derivatives(self, params):
        d = self.dimension
        return torch.eye(d * d, dtype=params.dtype, device=params.device).reshape(d * d, d, d)


def new_linear_transform(name: str, dimension: int, center: np.ndarray | Sequence[float] | None = None, *,
                         compute_zyx: bool = False
                         ) -> CenteredLinearTransform:
    """A linear transform by its elastix name.

    Args:
        name: ``EulerTransform``, ``SimilarityTransform`` or ``AffineTransform``.
        dimension: D.
        center: centre of rotation (mm), default the origin.
        compute_zyx: 3-D Euler rotation order (ignored by the other transforms).

    Raises:
        ValueError: unknown name or unsupported dimension.
    """
    linear = linear_component(name)
    if linear.trait("compute_zyx"):
        return linear.factory(dimension, center, compute_zyx=compute_zyx and dimension == 3)
    return linear.factory(dimension, center)


def linear_component(name: str):
    """The registered linear transform ``name`` (docs/design.md §E6): its class and its traits
    (``initializer``, ``labelled_scales``, ``compute_zyx``).

    Raises:
        ValueError: not a registered linear transform (the message lists them).
    """
    found = component("Transform", name)
    if found.trait("kind") != "linear":
        linear = [n for n in names("Transform") if component("Transform", n).trait("kind") == "linear"]
        raise ValueError(f"not a linear transform handled here: {name!r}; expected one of {', '.join(linear)}")
    return found


def linear_transform_from_parameter_map(pmap: ParameterMap | Mapping[str, Any], dimension: int | None = None
                                        ) -> tuple[CenteredLinearTransform, torch.Tensor]:
    """The transform and parameters described by a TransformParameters map (what transformix reads).

    Args:
        pmap: :class:`ParameterMap` or dict with ``Transform``, ``NumberOfParameters``, ``TransformParameters``,
            ``CenterOfRotationPoint`` (and ``ComputeZYX`` for the 3-D Euler transform, default false).
        dimension: D; default ``FixedImageDimension``, else the length of ``CenterOfRotationPoint``.

    Returns:
        ``(transform, params)`` with ``params`` a ``Tensor[P]`` float64.

    Raises:
        ParameterError: missing centre ("Transform parameter file is corrupt"), wrong parameter count, bad values.
        ValueError: not a linear transform.

    Source: ``ReadFromFile`` of ``elxEulerTransform.hxx``, ``elxSimilarityTransform.hxx``,
    ``elxAdvancedAffineTransform.hxx``; docs/design.md §E10.3.
    """
    pm = as_parameter_map(pmap)
    name = pm.get_entry("Transform", 0)
    linear_component(name)
    if dimension is None:
        dimension = pm.get_entry("FixedImageDimension", 0, type=int) or len(pm.values("CenterOfRotationPoint"))
    center = [pm.get_entry("CenterOfRotationPoint", i, type=float) for i in range(dimension)]
    if not dimension or any(c is None for c in center):
        raise ParameterError("ERROR: No center of rotation is specified in the transform parameter file; "
                             "Transform parameter file is corrupt.")
    zyx = dimension == 3 and pm.get_entry("ComputeZYX", 0) == "true"
    transform = new_linear_transform(name, dimension, center, compute_zyx=zyx)
    p = transform.number_of_parameters
    n = pm.get_entry("NumberOfParameters", 0, type=int, default=p)
    values = pm.values("TransformParameters")
    if n != p or len(values) != p:
        raise ParameterError(f"{name} in {dimension}-D has {p} parameters; the map gives NumberOfParameters {n} and "
                             f"{len(values)} TransformParameters")
    params = torch.tensor([pm.get_entry("TransformParameters", i, type=float) for i in range(p)],
                          dtype=torch.float64)
    return transform, params

