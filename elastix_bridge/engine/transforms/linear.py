"""elastix's linear transforms (Euler, Similarity, Affine), their initialisation and optimizer scales.

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

Initialisation (elastix ``BeforeRegistration``: ``InitializeTransform`` then ``SetScales``) is reproduced by
:func:`make_linear_transform` (or its parts :func:`read_center_of_rotation`, :func:`initializer_center_and_translation`,
:func:`initialize_linear_transform`, :func:`transform_scales`, :func:`automatic_scales_estimation`).
:func:`linear_transform_from_parameter_map` reads a TransformParameters map back (the transformix side).

torch is imported inside the functions (importing this module imports neither torch nor itk).

Sources (docs/design.md §E6.1–§E6.3, §E10.1): ``Components/Transforms/EulerTransform/elxEulerTransform.hxx``,
``Components/Transforms/SimilarityTransform/elxSimilarityTransform.hxx``,
``Components/Transforms/AdvancedAffineTransform/elxAdvancedAffineTransform.hxx``,
``Components/Transforms/AdvancedAffineTransform/itkCenteredTransformInitializer2.hxx``,
``Common/Transforms/itkAdvanced{Rigid2D,Euler3D,Similarity2D,Similarity3D,VersorTransform,MatrixOffsetTransformBase}``
``Transform.hxx``, ``Common/Transforms/itkAdvancedImageMomentsCalculator.hxx``,
``Core/ComponentBaseClasses/elxTransformBase.hxx`` (``AutomaticScalesEstimation``), ITK
``itkCenteredTransformInitializer.hxx`` / ``itkImageMomentsCalculator.hxx``.

Why this module is longer than ~600 lines: Euler, Similarity and Affine share their centred form,
parameter layouts, elastix's initialisers and automatic scales; each piece serves all three, and a
module per transform would repeat them.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from elastix_bridge.engine.components import component, names, register
from elastix_bridge.core.geometry import ImageGeometry
from elastix_bridge.engine.transforms.base import Transform
from elastix_bridge.core.parameters import ParameterError, ParameterMap, format_numbers

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from elastix_bridge.engine.images.level_images import LevelImage, Mask

__all__ = [
    "INITIALIZATION_METHODS",
    "CenteredLinearTransform",
    "EulerTransform",
    "SimilarityTransform",
    "AffineTransform",
    "LinearTransformSetup",
    "new_linear_transform",
    "make_linear_transform",
    "read_center_of_rotation",
    "geometric_center",
    "initializer_center_and_translation",
    "initialize_linear_transform",
    "default_scales",
    "transform_scales",
    "automatic_scales_estimation",
    "linear_transform_from_parameter_map",
]

#: ``AutomaticTransformInitializationMethod`` values elastix knows (Euler/Similarity only distinguish
#: ``CenterOfGravity``; every other value means ``GeometricalCenter`` there).
INITIALIZATION_METHODS = ("GeometricalCenter", "CenterOfGravity", "Origins", "GeometryTop")

#: default optimizer scale of rotation / matrix parameters (elastix ``SetScales``).
_ROTATION_SCALE = 100000.0
#: default optimizer scale of the isotropic scaling parameter σ of the SimilarityTransform.
_SCALING_SCALE = 10000.0
#: Similarity-3D: ``‖v‖ ≥ 1 − ε`` → ``v ← v / (‖v‖·(1 + ε))`` (``itkAdvancedSimilarity3DTransform.hxx``).
_VERSOR_EPSILON = 1e-10


# ============================================================================================ transforms


def _rot2(c, s):
    """``[[c, −s], [s, c]]`` as a torch ``(2, 2)`` tensor (differentiable)."""
    import torch

    return torch.stack([torch.stack([c, -s]), torch.stack([s, c])])


def _euler3_factors(angles):
    """``R_x, R_y, R_z`` and their angle derivatives for ``angles = (θ_x, θ_y, θ_z)`` (torch, ``(3, 3)`` each)."""
    import torch

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
    def parameters(self) -> "torch.Tensor":
        """Identity parameters (elastix ``SetIdentity``), ``Tensor[P]`` float64 on CPU."""
        import torch

        return torch.tensor(self._identity(), dtype=torch.float64)

    def translation(self, params: "torch.Tensor") -> "torch.Tensor":
        """The translation part ``t`` (mm) of ``params``, ``(D,)``."""
        return params[list(self.translation_indices)]

    def with_translation(self, params: torch.Tensor | np.ndarray,
                         translation: np.ndarray | Sequence[float] | torch.Tensor) -> "torch.Tensor":
        """A copy of ``params`` (``(P,)``) with the translation part replaced by ``translation`` (``(D,)``, mm)."""
        import torch

        out = torch.as_tensor(params, dtype=torch.float64).clone()
        out[list(self.translation_indices)] = torch.as_tensor(
            np.asarray(translation, dtype=np.float64).reshape(-1), dtype=out.dtype, device=out.device)
        return out

    # ------------------------------------------------------------------ maps
    def matrix(self, params: "torch.Tensor") -> "torch.Tensor":  # pragma: no cover - abstract
        """``M(μ)``, ``(D, D)`` torch tensor, differentiable in ``params``."""
        raise NotImplementedError

    def _matrix_derivatives(self, params: "torch.Tensor") -> "torch.Tensor":  # pragma: no cover - abstract
        """``∂M/∂μ_k`` for ``k`` in :attr:`matrix_indices` as elastix computes them, ``(K, D, D)``."""
        raise NotImplementedError

    def offset(self, params: torch.Tensor) -> np.ndarray:
        """ITK offset ``t + c − M·c`` (mm, ``np.float64[D]``), so that ``T(x) = M·x + offset``.

        Computed in ITK's order (``ComputeOffset``): ``o_i = t_i + c_i``, then ``o_i −= M_ij·c_j`` for each ``j``.
        """
        import torch

        p = torch.as_tensor(params, dtype=torch.float64).detach().cpu()
        m = self.matrix(p).numpy()
        out = self.translation(p).numpy() + self.center
        for j in range(m.shape[1]):
            out = out - m[:, j] * self.center[j]
        return out

    def _map(self, params, points):
        if _ITK_ORDER.get():
            # ITK's TransformPoint arithmetic (MatrixOffsetTransformBase): M·x summed left to right, then the
            # offset; no gradient (used only for decisions elastix takes on transformed points).
            m = self.matrix(params).detach().cpu().numpy()
            return points.new_tensor(matrix_times_points(m, points.detach().cpu().numpy()) + self.offset(params))
        # elastix's analytic Jacobian is dM/dμ·(x − c): this form's autograd derivative matches it
        c = points.new_tensor(self.center)
        return (points - c) @ self.matrix(params).T + c + self.translation(params)

    def transform_points(self, params: "torch.Tensor", points: "torch.Tensor") -> "torch.Tensor":
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
        import torch

        self._check(params, points)
        dtype = torch.promote_types(params.dtype, points.dtype)
        return self._map(params.to(device=points.device, dtype=dtype), points.to(dtype))

    def jacobian(self, points: "torch.Tensor",
                 params: "torch.Tensor | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
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
        import torch

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
    def scales(self) -> "torch.Tensor":
        """elastix's default optimizer (squared) scales, ``Tensor[P]`` float64 (docs/design.md §E6.3)."""
        import torch

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
        import torch

        if self.dimension == 2:
            return _rot2(torch.cos(params[0]), torch.sin(params[0]))
        rx, ry, rz, *_ = _euler3_factors(params[:3])
        return rz @ ry @ rx if self.compute_zyx else rz @ rx @ ry

    def _matrix_derivatives(self, params):
        import torch

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


_ELASTIX_JACOBIAN_FUNCTION = None


def _elastix_jacobian_function():
    """Autograd function ``(params, points) -> T(x)`` whose parameter gradient uses elastix's ``GetJacobian``.

    Used by the 3-D :class:`SimilarityTransform` so that ``∂(loss)/∂μ = Σ_n J_elastix(x_n)ᵀ·∂loss/∂T(x_n)``, which
    is what elastix's metrics compute (they never differentiate the map itself).
    """
    global _ELASTIX_JACOBIAN_FUNCTION
    if _ELASTIX_JACOBIAN_FUNCTION is not None:
        return _ELASTIX_JACOBIAN_FUNCTION
    import torch

    class _ElastixJacobianMap(torch.autograd.Function):
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

    _ELASTIX_JACOBIAN_FUNCTION = _ElastixJacobianMap
    return _ELASTIX_JACOBIAN_FUNCTION


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
        import torch

        if self.dimension == 2:
            return torch.tensor([_SCALING_SCALE, _ROTATION_SCALE, 1.0, 1.0], dtype=torch.float64)
        return torch.tensor([_ROTATION_SCALE] * 3 + [1.0] * 3 + [_SCALING_SCALE], dtype=torch.float64)

    @staticmethod
    def versor(params: torch.Tensor) -> torch.Tensor:
        """The (renormalised) versor ``(v_x, v_y, v_z, w)`` of 3-D parameters, torch ``(4,)``."""
        import torch

        v = params[:3]
        norm = torch.sqrt((v * v).sum())
        v = torch.where(norm >= 1.0 - _VERSOR_EPSILON, v / (norm + _VERSOR_EPSILON * norm), v)
        w = torch.sqrt(1.0 - (v * v).sum())
        return torch.cat([v, w[None]])

    def matrix(self, params: torch.Tensor) -> torch.Tensor:
        import torch

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
        import torch

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
        import torch

        if self.dimension == 2 or not self.elastix_jacobian:
            return super().transform_points(params, points)
        self._check(params, points)
        dtype = torch.promote_types(params.dtype, points.dtype)
        return _elastix_jacobian_function().apply(params.to(device=points.device, dtype=dtype), points.to(dtype),
                                                  self)


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
        import torch

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
    linear = _linear(name)
    if linear.trait("compute_zyx"):
        return linear.factory(dimension, center, compute_zyx=compute_zyx and dimension == 3)
    return linear.factory(dimension, center)


def _linear(name: str):
    """The registered linear transform ``name`` (docs/design.md §E6).

    Raises:
        ValueError: not a registered linear transform (the message lists them).
    """
    found = component("Transform", name)
    if found.trait("kind") != "linear":
        linear = [n for n in names("Transform") if component("Transform", n).trait("kind") == "linear"]
        raise ValueError(f"not a linear transform handled here: {name!r}; expected one of {', '.join(linear)}")
    return found


# ============================================================================================ initialisation


def _as_parameter_map(pmap) -> ParameterMap:
    if isinstance(pmap, ParameterMap):
        return pmap
    if pmap is None:
        return ParameterMap()
    return ParameterMap.from_dict(dict(pmap))


def _image_array(image, geometry: ImageGeometry, which: str) -> np.ndarray:
    """Voxel values ``(z, y, x)`` as float64 after elastix's cast to the float internal pixel type."""
    if image is None:
        raise ValueError(f"the {which} image values are needed for AutomaticTransformInitializationMethod "
                         "CenterOfGravity; pass the full-resolution image array")
    arr = getattr(image, "array_zyx", image)
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if tuple(arr.shape) != geometry.shape_zyx:
        raise ValueError(f"{which} image array has shape {tuple(arr.shape)}; its geometry needs "
                         f"{geometry.shape_zyx} (z, y, x)")
    return arr.astype(np.float32).astype(np.float64)


def matrix_times_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix @ p`` for each row ``p`` of ``points`` ``(N, D)``, summed left to right without fused
    multiply-adds, as ITK's ``Matrix * Point``."""
    out = np.zeros_like(points, dtype=np.float64)
    for j in range(points.shape[1]):
        out += points[:, j:j + 1] * matrix[:, j][None, :]
    return out


def translation_initialization(method: str, fixed_geometry: ImageGeometry, moving_geometry: ImageGeometry,
                               fixed_image: np.ndarray | LevelImage | None = None,
                               moving_image: np.ndarray | LevelImage | None = None,
                               fixed_mask: "Mask | None" = None,
                               moving_mask: "Mask | None" = None) -> np.ndarray:
    """Initial translation ``c_moving − c_fixed`` of elastix's TranslationTransform initializer (mm, ``(D,)``).

    ``GeometricalCenter`` (and any other name but ``CenterOfGravity``): centres at the continuous index
    ``start + size/2`` (not ``(size − 1)/2`` as for the other transforms) of each image, or of its mask's
    index bounding box. ``CenterOfGravity``: intensity centroids over all voxels, or over the voxels
    inside each image's mask (ITK ``ImageMomentsCalculator`` with a spatial-object mask).

    Raises:
        ValueError: missing image values, zero mass.

    Source: elastix ``itkTranslationTransformInitializer.hxx``; docs/design.md §E6.2.
    """
    if method == "CenterOfGravity":
        arrays = [getattr(a, "array_zyx", a) for a in (fixed_image, moving_image)]
        if any(a is None for a in arrays):
            raise ValueError("CenterOfGravity needs the full-resolution image values")
        return (_center_of_gravity_all_voxels(np.asarray(arrays[1], dtype=np.float32), moving_geometry, moving_mask)
                - _center_of_gravity_all_voxels(np.asarray(arrays[0], dtype=np.float32), fixed_geometry, fixed_mask))

    def centre(geometry: ImageGeometry, mask: "Mask | None") -> np.ndarray:
        if mask is None:
            first, size = np.zeros(geometry.dimension), np.asarray(geometry.size, dtype=np.float64)
        else:
            lo, hi = mask.bounding_box_index()
            first, size = lo.astype(np.float64), (hi - lo + 1).astype(np.float64)
        return geometry.itk_continuous_index_to_point(first + size / 2.0)

    return centre(moving_geometry, moving_mask) - centre(fixed_geometry, fixed_mask)


def geometric_center(geometry: ImageGeometry, mask: "Mask | None" = None) -> np.ndarray:
    """Physical point (mm) of the continuous index ``start + (size − 1)/2`` of an image region.

    The region is the whole image, or the index bounding box of the mask's non-zero voxels (ITK
    ``ImageMaskSpatialObject::ComputeMyBoundingBoxInIndexSpace``), converted with ``geometry`` (elastix converts
    the mask's index box with the *image's* geometry).

    Raises:
        ValueError: empty mask.

    Source: ITK ``CenteredTransformInitializer`` / elastix ``itkCenteredTransformInitializer2.hxx`` (Geometry).
    """
    if mask is None:
        index = (np.asarray(geometry.size, dtype=np.float64) - 1.0) / 2.0
    else:
        first, last = mask.bounding_box_index()
        size = (last - first + 1).astype(np.float64)
        index = first.astype(np.float64) + (size - 1.0) / 2.0
    return geometry.itk_continuous_index_to_point(index)


def _sequential_sum(values: np.ndarray, start: float = 0.0) -> float:
    """``start + v_0 + v_1 + …`` added one by one (the rounding of a C loop; ``np.sum`` is pairwise)."""
    if values.size == 0:
        return start
    return float(np.cumsum(np.concatenate(([start], values)))[-1])


def _center_of_gravity_all_voxels(array: np.ndarray, geometry: ImageGeometry, mask: "Mask | None" = None,
                                  chunk: int = 1 << 20) -> np.ndarray:
    """Intensity-weighted centroid over all voxels, mm, as ITK ``ImageMomentsCalculator`` (one thread, voxels in
    memory order, positions from ``TransformIndexToPhysicalPoint``, ``Cg = Σ v·p / Σ v`` summed sequentially);
    with a mask (``SetSpatialObjectMask``) only the voxels whose physical point lies inside it count."""
    d = geometry.dimension
    flat = array.reshape(-1)
    size = np.asarray(geometry.size, dtype=np.int64)
    strides = np.concatenate([[1], np.cumprod(size)[:-1]])
    m0 = 0.0
    cg = [0.0] * d
    for a in range(0, flat.size, chunk):
        k = np.arange(a, min(a + chunk, flat.size), dtype=np.int64)
        idx = np.stack([(k // strides[c]) % size[c] for c in range(d)], axis=1)
        pts = geometry.itk_index_to_points(idx)
        v = flat[a:a + k.size]
        if mask is not None:
            import torch

            inside = mask.contains(torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float64))).numpy()
            pts, v = pts[inside], v[inside]
        m0 = _sequential_sum(v, m0)
        for r in range(d):
            cg[r] = _sequential_sum(pts[:, r] * v, cg[r])
    if m0 == 0.0:
        raise ValueError("Compute(): Total Mass of the image was zero. Aborting here to prevent division by zero "
                         "later on.")
    return np.array([c / m0 for c in cg])


def _center_of_gravity_grid(array: np.ndarray, geometry: ImageGeometry, mask, number_of_samples: int,
                            lower_threshold) -> np.ndarray:
    """elastix ``AdvancedImageMomentsCalculator``: centroid over a grid of ≈N samples, mask, threshold; mm."""
    from elastix_bridge.engine.samplers import GridSampler

    if lower_threshold is not None:  # BinaryThresholdImageFilter: inside (1) iff lower <= value
        array = (array >= float(np.float32(lower_threshold))).astype(np.float64)
    sampler = GridSampler(geometry, mask=None, number_of_samples=max(1, int(number_of_samples)))
    idx = sampler.grid_indices().numpy()  # (K, D) integer indices, x fastest
    if idx.shape[0] == 0:
        raise ValueError(f"No valid voxels (0/{number_of_samples}) found to estimate the "
                         "AutomaticTransformInitialization parameters.")
    pts = geometry.itk_index_to_points(idx)
    lin = idx.astype(np.int64)
    values = array[tuple(lin[:, k] for k in reversed(range(geometry.dimension)))]
    if mask is not None:  # ImageMaskSpatialObject::IsInsideInWorldSpace (nearest mask voxel non-zero)
        import torch

        inside = mask.contains(torch.as_tensor(pts)).numpy()
        pts, values = pts[inside], values[inside]
    m0 = float(values.sum())
    if m0 == 0.0:
        raise ValueError("Compute(): Total Mass of the image was zero. Aborting here to prevent division by zero "
                         "later on.")
    return (values[:, None] * pts).sum(axis=0) / m0


def _geometry_top(fixed_geometry, moving_geometry, fixed_mask, moving_mask):
    """elastix ``GeometryTop``: centre and translation aligning the top (max z) centres of the bounding boxes."""

    def box(geometry: ImageGeometry, mask: "Mask | None") -> tuple[np.ndarray, np.ndarray]:
        if mask is None:
            start = np.zeros(3)
            size = np.asarray(geometry.size, dtype=np.float64)
        else:
            first, last = mask.bounding_box_index()
            start = first.astype(np.float64)
            size = (last - first + 1).astype(np.float64)
        world = np.array([geometry.itk_continuous_index_to_point([start[0] + x * size[0], start[1] + y * size[1],
                                                                   start[2] + z * size[2]])
                          for z in (0, 1) for y in (0, 1) for x in (0, 1)])
        return world.min(axis=0), world.max(axis=0)

    fmin, fmax = box(fixed_geometry, fixed_mask)
    mmin, mmax = box(moving_geometry, moving_mask)
    top_f = np.array([(fmax[0] + fmin[0]) / 2.0, (fmax[1] + fmin[1]) / 2.0, fmax[2]])
    top_m = np.array([(mmax[0] + mmin[0]) / 2.0, (mmax[1] + mmin[1]) / 2.0, mmax[2]])
    return (fmax + fmin) / 2.0, top_m - top_f


def initializer_center_and_translation(
    transform_name: str,
    method: str,
    fixed_geometry: ImageGeometry,
    moving_geometry: ImageGeometry,
    fixed_image: np.ndarray | LevelImage | None = None,
    moving_image: np.ndarray | LevelImage | None = None,
    fixed_mask: "Mask | None" = None,
    moving_mask: "Mask | None" = None,
    *,
    number_of_samples: int = 10000,
    lower_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Centre of rotation and translation computed by elastix's transform initializer.

    * Euler / Similarity (ITK ``CenteredTransformInitializer``, no masks): ``CenterOfGravity`` → intensity
      centroids over *all* voxels; any other method → ``GeometricalCenter``.
    * Affine (elastix ``CenteredTransformInitializer2``, masks honoured):
      ``GeometricalCenter`` (also for unknown names): centres of the images or of the masks' index bounding
      boxes (``start + (size−1)/2``); ``CenterOfGravity``: centroids over a grid of ≈``number_of_samples``
      points of each image, restricted to its mask, values thresholded to 0/1 at ``lower_threshold`` if given;
      ``Origins``: ``t = O_moving − O_fixed``, ``c = geometric centre(moving) − t``; ``GeometryTop`` (3-D):
      align the top (max z) centres of the physical bounding boxes of the index boxes ``[start, start+size]``
      (of the images or masks), ``c`` = centre of the fixed box.

    For all but Origins/GeometryTop: ``c = c_fixed``, ``t = c_moving − c_fixed``.

    Args:
        transform_name: elastix ``Transform`` name.
        method: ``AutomaticTransformInitializationMethod``.
        fixed_geometry, moving_geometry: full-resolution image geometries.
        fixed_image, moving_image: ``(z, y, x)`` voxel arrays (or objects with ``array_zyx``), needed only for
            ``CenterOfGravity``; cast to float32 like elastix's internal images.
        fixed_mask, moving_mask: the user's (not eroded) masks; used by the Affine transform only.
        number_of_samples: ``NumberOfSamplesForCenteredTransformInitialization`` (Affine CenterOfGravity).
        lower_threshold: ``LowerThresholdForCenterGravity`` when ``CenterOfGravityUsesLowerThreshold`` is true,
            else ``None`` (Affine CenterOfGravity).

    Returns:
        ``(center (D,), translation (D,))`` in mm, ``np.float64``.

    Raises:
        ValueError: missing image values, zero total mass, empty mask, GeometryTop in 2-D, unknown transform.

    Source: ITK ``Modules/Registration/Common/include/itkCenteredTransformInitializer.hxx``,
    ``itkImageMomentsCalculator.hxx``; elastix ``itkCenteredTransformInitializer2.hxx``,
    ``itkAdvancedImageMomentsCalculator.hxx``; docs/design.md §E6.2.
    """
    initializer = _linear(transform_name).trait("initializer")
    if fixed_geometry.dimension != moving_geometry.dimension:
        raise ValueError("fixed and moving images have different dimensions")
    if initializer == "CenteredTransformInitializer":
        if method == "CenterOfGravity":
            cf = _center_of_gravity_all_voxels(_image_array(fixed_image, fixed_geometry, "fixed"), fixed_geometry)
            cm = _center_of_gravity_all_voxels(_image_array(moving_image, moving_geometry, "moving"),
                                               moving_geometry)
        else:
            cf, cm = geometric_center(fixed_geometry), geometric_center(moving_geometry)
        return cf, cm - cf
    # CenteredTransformInitializer2 (AffineTransform)
    if method == "CenterOfGravity":
        cf = _center_of_gravity_grid(_image_array(fixed_image, fixed_geometry, "fixed"), fixed_geometry,
                                     fixed_mask, number_of_samples, lower_threshold)
        cm = _center_of_gravity_grid(_image_array(moving_image, moving_geometry, "moving"), moving_geometry,
                                     moving_mask, number_of_samples, lower_threshold)
        return cf, cm - cf
    if method == "Origins":  # physical points of index 0 (= the origins)
        t = moving_geometry.itk_index_to_points(np.zeros(moving_geometry.dimension))[0] - \
            fixed_geometry.itk_index_to_points(np.zeros(fixed_geometry.dimension))[0]
        return geometric_center(moving_geometry) - t, t
    if method == "GeometryTop":
        if fixed_geometry.dimension < 3:
            raise ValueError("ERROR: The GeometryTop intialization method does not make sense for 2D images. "
                             "Use only for 3D or higher dimensional images.")
        if fixed_geometry.dimension > 3:
            raise ValueError("GeometryTop is implemented for 3-D images only")
        return _geometry_top(fixed_geometry, moving_geometry, fixed_mask, moving_mask)
    cf = geometric_center(fixed_geometry, fixed_mask)
    cm = geometric_center(moving_geometry, moving_mask)
    return cf, cm - cf


def read_center_of_rotation(pmap: ParameterMap | Mapping[str, Any], fixed_geometry: ImageGeometry) -> np.ndarray | None:
    """The user's centre of rotation (mm), or ``None`` when none is given.

    ``CenterOfRotation`` (integer voxel index, all D entries) → physical point of that index of the fixed image;
    else ``CenterOfRotationPoint`` (mm, all D entries).  The index wins when both are given.  Entries are read
    individually (entry ``i``, no fallback); a partial list counts as absent.

    Raises:
        ParameterError: a value that cannot be converted (non-integer index, non-number point).

    Source: ``InitializeTransform`` / ``ReadCenterOfRotationPoint`` of the elastix linear transforms.
    """
    pm = _as_parameter_map(pmap)
    d = fixed_geometry.dimension
    index = [pm.get_entry("CenterOfRotation", i, type=int) for i in range(d)]
    if all(v is not None for v in index):
        return fixed_geometry.itk_index_to_points(np.asarray(index, dtype=np.float64))[0]
    point = [pm.get_entry("CenterOfRotationPoint", i, type=float) for i in range(d)]
    if all(v is not None for v in point):
        return np.asarray(point, dtype=np.float64)
    return None


def _points_through(initial_transform, points: np.ndarray) -> np.ndarray:
    import torch

    out = initial_transform(torch.as_tensor(points, dtype=torch.float64))
    if hasattr(out, "detach"):
        out = out.detach().cpu().numpy()
    return np.asarray(out, dtype=np.float64).reshape(points.shape)


def _use_composition(how_to_combine: str) -> bool:
    return how_to_combine == "Compose"


def initialize_linear_transform(
    transform: CenteredLinearTransform,
    pmap: ParameterMap | Mapping[str, Any],
    fixed_geometry: ImageGeometry,
    moving_geometry: ImageGeometry,
    fixed_image: np.ndarray | LevelImage | None = None,
    moving_image: np.ndarray | LevelImage | None = None,
    fixed_mask: "Mask | None" = None,
    moving_mask: "Mask | None" = None,
    *,
    initial_transform: Callable | None = None,
    how_to_combine: str = "Compose",
    component_label: str = "Transform0",
) -> "torch.Tensor":
    """elastix ``InitializeTransform``: set ``transform.center`` and return the initial parameters.

    1. Parameters = identity.
    2. User centre: :func:`read_center_of_rotation`.
    3. ``AutomaticTransformInitialization`` (entry 0, default false) counts only without an initial transform.
    4. If no user centre or automatic initialisation: run :func:`initializer_center_and_translation` with
       ``AutomaticTransformInitializationMethod`` (entry 0, default ``GeometricalCenter``); for the Affine
       ``CenterOfGravity`` also ``CenterOfGravityUsesLowerThreshold`` (``<label>`` prefix, default false),
       ``LowerThresholdForCenterGravity`` (500), ``NumberOfSamplesForCenteredTransformInitialization`` (10000).
    5. Without automatic initialisation the translation is reset to 0.
    6. A user centre replaces the initializer's centre.
    7. With an initial transform and ``Compose``: ``c ← T_init(c)``.

    Args:
        transform: the transform; its ``center`` is set.
        pmap: the registration's :class:`ParameterMap` (or a dict).
        fixed_geometry, moving_geometry: full-resolution geometries.
        fixed_image, moving_image: ``(z, y, x)`` arrays, needed for ``CenterOfGravity`` only.
        fixed_mask, moving_mask: the user's masks (Affine only).
        initial_transform: the initial transform as a callable ``(N, D) float64 tensor → (N, D)`` (mm), or
            ``None``.
        how_to_combine: ``HowToCombineTransforms`` (``Compose``; anything else = Add).
        component_label: the transform's component label (prefix of ``CenterOfGravityUsesLowerThreshold``).

    Returns:
        ``Tensor[P]`` float64 initial parameters (identity with the initial translation).

    Raises:
        ParameterError: unconvertible parameter values.
        ValueError: see :func:`initializer_center_and_translation`.

    Source: ``InitializeTransform`` in ``elxEulerTransform.hxx``, ``elxSimilarityTransform.hxx``,
    ``elxAdvancedAffineTransform.hxx``; docs/design.md §E6.2.
    """
    pm = _as_parameter_map(pmap)
    d = transform.dimension
    if fixed_geometry.dimension != d or moving_geometry.dimension != d:
        raise ValueError(f"transform dimension {d} does not match the images")
    user_center = read_center_of_rotation(pm, fixed_geometry)
    automatic = bool(pm.get_entry("AutomaticTransformInitialization", 0, type=bool, default=False))
    automatic = automatic and initial_transform is None
    center = np.zeros(d)
    translation = np.zeros(d)
    if user_center is None or automatic:
        method = pm.get_entry("AutomaticTransformInitializationMethod", 0, default="GeometricalCenter")
        kwargs = {}
        if _linear(transform.name).trait("initializer") == "CenteredTransformInitializer2" and \
                method == "CenterOfGravity":
            if pm.get("CenterOfGravityUsesLowerThreshold", 0, default=False, type=bool, prefix=component_label):
                kwargs["lower_threshold"] = pm.get_entry("LowerThresholdForCenterGravity", 0, type=float,
                                                         default=500.0)
            kwargs["number_of_samples"] = int(pm.get_entry("NumberOfSamplesForCenteredTransformInitialization", 0,
                                                           type=float, default=10000.0))
        center, translation = initializer_center_and_translation(
            transform.name, method, fixed_geometry, moving_geometry, fixed_image, moving_image, fixed_mask,
            moving_mask, **kwargs)
    if not automatic:
        translation = np.zeros(d)
    if user_center is not None:
        center = user_center
    if initial_transform is not None and _use_composition(how_to_combine):
        center = _points_through(initial_transform, np.asarray(center, dtype=np.float64).reshape(1, d))[0]
    transform.center = center
    return transform.with_translation(transform.parameters, translation)


# ============================================================================================ scales


def default_scales(transform: CenteredLinearTransform) -> "torch.Tensor":
    """elastix's default scales of ``transform`` (``transform.scales()``), ``Tensor[P]`` float64."""
    return transform.scales()


def automatic_scales_estimation(
    transform: CenteredLinearTransform,
    fixed_geometry: ImageGeometry,
    parameters: torch.Tensor | None = None,
    *,
    initial_transform: Callable | None = None,
    how_to_combine: str = "Compose",
    number_of_samples: int = 10000,
) -> "torch.Tensor":
    """elastix ``AutomaticScalesEstimation``: ``S_p = (1/N)·Σ_samples Σ_d J_dp(x)²``.

    The samples are a grid of ≈``number_of_samples`` points on the whole full-resolution fixed image (no mask;
    isotropic grid spacing ``max(1, round((#voxels/N)^(1/D)))`` voxels); the Jacobian is that of the current
    transform at ``parameters`` (default identity), evaluated at ``T_init(x)`` under ``Compose``.

    Args:
        transform: the (initialised, i.e. centred) transform.
        fixed_geometry: full-resolution fixed image geometry.
        parameters: ``(P,)`` parameters at which the Jacobian is evaluated (elastix: the initial ones).
        initial_transform: callable ``(N, D) tensor → (N, D)`` (mm) or ``None``.
        how_to_combine: ``HowToCombineTransforms``.
        number_of_samples: grid size target (10000 in elastix).

    Returns:
        ``Tensor[P]`` float64 scales.

    Source: ``Core/ComponentBaseClasses/elxTransformBase.hxx`` ``AutomaticScalesEstimation``; docs/design.md §E6.3.
    """
    import torch

    from elastix_bridge.engine.samplers import GridSampler

    points = GridSampler(fixed_geometry, number_of_samples=number_of_samples).sample()  # (N, D) float64
    if points.shape[0] == 0:
        raise ValueError("No valid voxels found to estimate the scales.")
    if initial_transform is not None and _use_composition(how_to_combine):
        points = torch.as_tensor(_points_through(initial_transform, points.numpy()), dtype=torch.float64)
    params = transform.parameters if parameters is None else torch.as_tensor(parameters, dtype=torch.float64)
    values, _ = transform.jacobian(points, params)
    return (values * values).sum(dim=(0, 1)) / float(points.shape[0])


def transform_scales(
    transform: CenteredLinearTransform,
    pmap: ParameterMap | Mapping[str, Any],
    fixed_geometry: ImageGeometry,
    parameters: torch.Tensor | None = None,
    *,
    initial_transform: Callable | None = None,
    how_to_combine: str = "Compose",
    component_label: str = "Transform0",
) -> "torch.Tensor":
    """elastix ``SetScales``: the optimizer (squared) scales of a linear transform.

    * ``AutomaticScalesEstimation true`` (entry 0) → :func:`automatic_scales_estimation`.
    * Euler / Affine: defaults (rotation/matrix entries 100000, translations 1); ``Scales`` with 1 value → that
      value for the rotation/matrix entries; with P values → per parameter; another count → error.
    * Similarity: defaults, each entry ``i`` overridden by ``Scales[i]`` then ``<label>Scales[i]`` when present
      (no fallback to entry 0).

    Args:
        transform: the initialised transform.
        pmap: registration :class:`ParameterMap` (or dict).
        fixed_geometry: full-resolution fixed geometry (automatic estimation).
        parameters: initial parameters (automatic estimation; default identity).
        initial_transform, how_to_combine: see :func:`automatic_scales_estimation`.
        component_label: the transform's component label (``Transform0``), prefix of ``Scales`` for Similarity.

    Returns:
        ``Tensor[P]`` float64.

    Raises:
        ParameterError: ``Scales`` with a wrong number of values (Euler/Affine) or unconvertible values.

    Source: ``SetScales`` in ``elxEulerTransform.hxx``, ``elxSimilarityTransform.hxx``,
    ``elxAdvancedAffineTransform.hxx``; docs/design.md §E6.3.
    """
    pm = _as_parameter_map(pmap)
    if pm.get_entry("AutomaticScalesEstimation", 0, type=bool, default=False):
        return automatic_scales_estimation(transform, fixed_geometry, parameters,
                                           initial_transform=initial_transform, how_to_combine=how_to_combine)
    scales = transform.scales()
    p = transform.number_of_parameters
    if _linear(transform.name).trait("labelled_scales"):
        for i in range(p):
            for key in ("Scales", component_label + "Scales"):
                v = pm.get_entry(key, i, type=float)
                if v is not None:
                    scales[i] = v
        return scales
    count = len(pm.values("Scales"))
    if count == 1:
        scales[: transform.rotation_part] = pm.get_entry("Scales", 0, type=float)
    elif count == p:
        for i in range(p):
            scales[i] = pm.get_entry("Scales", i, type=float)
    elif count != 0:
        raise ParameterError("ERROR: The Scales-option in the parameter-file has not been set properly "
                             f"({count} values for {p} parameters of the {transform.name}; give 1 or {p}).")
    return scales


# ============================================================================================ one-call setup


class LinearTransformSetup(NamedTuple):
    """Result of :func:`make_linear_transform` (unpacks as ``transform, parameters, scales``).

    Attributes:
        transform: the centred transform (``center`` set).
        parameters: ``Tensor[P]`` float64 initial parameters.
        scales: ``Tensor[P]`` float64 optimizer (squared) scales.
    """

    transform: CenteredLinearTransform
    parameters: "torch.Tensor"
    scales: "torch.Tensor"


def make_linear_transform(
    name: str,
    pmap: ParameterMap | Mapping[str, Any],
    fixed_geometry: ImageGeometry,
    moving_geometry: ImageGeometry,
    fixed_image: np.ndarray | LevelImage | None = None,
    moving_image: np.ndarray | LevelImage | None = None,
    fixed_mask: "Mask | None" = None,
    moving_mask: "Mask | None" = None,
    *,
    initial_transform: Callable | None = None,
    how_to_combine: str | None = None,
    component_label: str = "Transform0",
) -> LinearTransformSetup:
    """elastix ``BeforeRegistration`` of a linear transform: create, initialise, and compute the scales.

    Args:
        name: ``EulerTransform``, ``SimilarityTransform`` or ``AffineTransform``.
        pmap: the registration's :class:`ParameterMap` (or a dict of lists).
        fixed_geometry, moving_geometry: full-resolution image geometries (mm, ITK order).
        fixed_image, moving_image: full-resolution ``(z, y, x)`` voxel arrays (or ``LevelImage``), needed only
            for ``AutomaticTransformInitializationMethod CenterOfGravity``.
        fixed_mask, moving_mask: the user's (un-eroded) masks; only the Affine initializer uses them.
        initial_transform: the initial transform (previous stages) as a callable ``(N, D) float64 tensor →
            (N, D)`` in mm, or ``None``.  Its presence disables automatic initialisation.
        how_to_combine: ``HowToCombineTransforms``; default: read from ``pmap`` (entry 0, ``Compose``).
        component_label: the transform's component label (``Transform0``).

    Returns:
        :class:`LinearTransformSetup` ``(transform, parameters, scales)``.  The Euler-3D rotation order is
        ``ComputeZYX false`` (elastix ignores ``ComputeZYX`` during a registration).

    Raises:
        ValueError: unknown transform or unsupported dimension, missing image values, zero mass, empty masks,
            GeometryTop in 2-D.
        ParameterError: bad parameter values.

    Source: docs/design.md §E6.1–§E6.3; the elastix files listed in the module docstring.
    """
    pm = _as_parameter_map(pmap)
    if how_to_combine is None:
        how_to_combine = pm.get_entry("HowToCombineTransforms", 0, default="Compose")
    transform = new_linear_transform(name, fixed_geometry.dimension)
    params = initialize_linear_transform(transform, pm, fixed_geometry, moving_geometry, fixed_image, moving_image,
                                         fixed_mask, moving_mask, initial_transform=initial_transform,
                                         how_to_combine=how_to_combine, component_label=component_label)
    scales = transform_scales(transform, pm, fixed_geometry, params, initial_transform=initial_transform,
                              how_to_combine=how_to_combine, component_label=component_label)
    return LinearTransformSetup(transform, params, scales)


# ============================================================================================ reading maps


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
    import torch

    pm = _as_parameter_map(pmap)
    name = pm.get_entry("Transform", 0)
    _linear(name)
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


# ``initializer``: ITK's CenteredTransformInitializer (no masks) or elastix's CenteredTransformInitializer2
# (masks, grid centre of gravity, Origins, GeometryTop); ``labelled_scales``: ``Scales`` read entry by entry,
# also with the component label (docs/design.md §E6.2, §E6.3).
register("Transform", "EulerTransform", EulerTransform, kind="linear", read=linear_transform_from_parameter_map,
         initializer="CenteredTransformInitializer", compute_zyx=True, labelled_scales=False,
         source="Components/Transforms/EulerTransform/elxEulerTransform.hxx")
register("Transform", "SimilarityTransform", SimilarityTransform, kind="linear",
         read=linear_transform_from_parameter_map, initializer="CenteredTransformInitializer", compute_zyx=False,
         labelled_scales=True, source="Components/Transforms/SimilarityTransform/elxSimilarityTransform.hxx")
register("Transform", "AffineTransform", AffineTransform, kind="linear", read=linear_transform_from_parameter_map,
         initializer="CenteredTransformInitializer2", compute_zyx=False, labelled_scales=False,
         source="Components/Transforms/AffineTransform/elxAdvancedAffineTransform.hxx")
