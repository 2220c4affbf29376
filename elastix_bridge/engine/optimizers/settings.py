"""The optimizers' per-level settings, read from a parameter map with elastix's defaults and rules.

Each optimizer (:mod:`.asgd`, :mod:`.gradient_descent`, :mod:`.quasi_newton`) is built from its own
settings class here. They live apart from the optimizers because the validation pass reads every
level's settings of every map before any work, and must do so without importing torch (the optimizer
modules import it); :mod:`elastix_bridge.engine.component_list` names each optimizer's class as its
``settings`` trait. Every class reads ``from_parameter_map(pmap, level, number_of_parameters=,
fixed_spacing=, moving_spacing=)``; only ASGD has defaults that depend on the images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from elastix_bridge.core.parameters import UInt
from elastix_bridge.engine.optimizers.line_search import MoreThuenteLineSearch

if TYPE_CHECKING:  # pragma: no cover
    from elastix_bridge.core.parameters import ParameterMap


@dataclass
class ASGDSettings:
    """Per-level ASGD settings with elastix's defaults (docs/design.md §E9.1)."""

    maximum_number_of_iterations: int = 500
    sp_A: float = 20.0
    automatic_parameter_estimation: bool = True
    estimation_method: str = "Original"
    maximum_step_length: float = 1.0
    number_of_gradient_measurements: int = 0
    number_of_jacobian_measurements: int = 1000
    number_of_samples_for_exact_gradient: int = 100000
    sigmoid_scale_factor: float = 0.1
    use_adaptive_step_sizes: bool = True
    use_constant_step: bool = False
    sigmoid_initial_time: float = 0.0
    maximum_number_of_sampling_attempts: int = 0
    sp_a: float = 400.0
    sp_alpha: float = 0.602
    sigmoid_max: float = 1.0
    sigmoid_min: float = -0.8
    sigmoid_scale: float = 1e-8
    new_samples_every_iteration: bool = False
    noise_compensation: bool = True

    @classmethod
    def from_parameter_map(cls, pmap: ParameterMap, level: int, number_of_parameters: int = 1,
                           fixed_spacing: np.ndarray | Sequence[float] = (1.0,),
                           moving_spacing: np.ndarray | Sequence[float] = (1.0,)) -> "ASGDSettings":
        """Read the settings of ``level`` with elastix's lookup rules.

        Args:
            pmap: :class:`elastix_bridge.core.parameters.ParameterMap`.
            level: resolution level (0 = coarsest).
            number_of_parameters: P, for the ``NumberOfJacobianMeasurements`` default max(1000, P).
            fixed_spacing, moving_spacing: full-resolution spacings (mm, ITK order) for the
                default ``MaximumStepLength`` (mean of the first min(D, 2) spacings of both). The
                defaults (one parameter, unit spacing) check the values written in the map only.

        Raises:
            elastix_bridge.core.parameters.ParameterError: a value of the wrong form.
            ValueError: an unknown ``ASGDParameterEstimationMethod``.
        """
        g = lambda name, default, typ=float, **kw: pmap.get(name, level=level, default=default, type=typ,
                                                             prefix="Optimizer0", **kw)
        nd = min(len(fixed_spacing), 2)
        mean_spacing = float(np.mean(np.concatenate([np.asarray(fixed_spacing)[:nd],
                                                     np.asarray(moving_spacing)[:nd]])))
        ratio = g("MaximumStepLengthRatio", 1.0)
        s = cls(
            maximum_number_of_iterations=g("MaximumNumberOfIterations", 500, UInt),
            sp_A=g("SP_A", 20.0),
            automatic_parameter_estimation=g("AutomaticParameterEstimation", True, bool),
            estimation_method=pmap.get("ASGDParameterEstimationMethod", default="Original"),
            maximum_step_length=g("MaximumStepLength", ratio * mean_spacing),
            number_of_gradient_measurements=g("NumberOfGradientMeasurements", 0, int),
            number_of_jacobian_measurements=g("NumberOfJacobianMeasurements",
                                              max(1000, number_of_parameters), int),
            number_of_samples_for_exact_gradient=g("NumberOfSamplesForExactGradient", 100000, int),
            sigmoid_scale_factor=g("SigmoidScaleFactor", 0.1),
            use_adaptive_step_sizes=(g("UseAdaptiveStepSizes", True, bool)
                                     if pmap.has("UseAdaptiveStepSizes")
                                     else g("UseCruzAcceleration", True, bool)),
            use_constant_step=g("UseConstantStep", False, bool),
            sigmoid_initial_time=g("SigmoidInitialTime", 0.0),
            maximum_number_of_sampling_attempts=g("MaximumNumberOfSamplingAttempts", 0, int),
            new_samples_every_iteration=g("NewSamplesEveryIteration", False, bool),
            noise_compensation=pmap.get("NoiseCompensation", default=True, type=bool),
        )
        if s.estimation_method not in ("Original", "OriginalButSigmoidToDefault", "DisplacementDistribution"):
            raise ValueError(f'ASGDParameterEstimationMethod "{s.estimation_method}" is not supported; use '
                             '"Original", "OriginalButSigmoidToDefault" or "DisplacementDistribution"')
        if not s.automatic_parameter_estimation:
            s.sp_a = g("SP_a", 400.0)
            s.sp_alpha = g("SP_alpha", 0.602)
            s.sigmoid_max = g("SigmoidMax", 1.0)
            s.sigmoid_min = g("SigmoidMin", -0.8)
            s.sigmoid_scale = g("SigmoidScale", 1e-8)
        return s


@dataclass
class StandardGradientDescentSettings:
    """Per-level settings with elastix's defaults (docs/design.md §E9.2)."""

    maximum_number_of_iterations: int = 500
    sp_a: float = 400.0
    sp_A: float = 50.0
    sp_alpha: float = 0.602
    maximum_number_of_sampling_attempts: int = 0
    new_samples_every_iteration: bool = False

    @classmethod
    def from_parameter_map(cls, pmap: ParameterMap, level: int, number_of_parameters: int = 1,
                           fixed_spacing: Sequence[float] = (1.0,),
                           moving_spacing: Sequence[float] = (1.0,)) -> "StandardGradientDescentSettings":
        """Read ``level``'s settings (elastix lookup rules, ``Optimizer0`` prefix).

        No default depends on the images: ``number_of_parameters`` and the spacings are accepted for the
        common settings interface and not read.
        """
        g = lambda name, default, typ=float: pmap.get(name, level=level, default=default, type=typ,
                                                     prefix="Optimizer0")
        return cls(maximum_number_of_iterations=g("MaximumNumberOfIterations", 500, UInt),
                   sp_a=g("SP_a", 400.0), sp_A=g("SP_A", 50.0), sp_alpha=g("SP_alpha", 0.602),
                   maximum_number_of_sampling_attempts=g("MaximumNumberOfSamplingAttempts", 0, int),
                   new_samples_every_iteration=g("NewSamplesEveryIteration", False, bool))


@dataclass
class RegularStepGradientDescentSettings:
    """Per-level settings with elastix's defaults (docs/design.md §E9.3); step lengths in parameter units."""

    maximum_number_of_iterations: int = 500
    maximum_step_length: float = 16.0
    minimum_step_length: float = 0.5
    minimum_gradient_magnitude: float = 1e-8
    relaxation_factor: float = 0.5
    maximum_number_of_sampling_attempts: int = 0
    new_samples_every_iteration: bool = False

    @classmethod
    def from_parameter_map(cls, pmap: ParameterMap, level: int, number_of_parameters: int = 1,
                           fixed_spacing: Sequence[float] = (1.0,),
                           moving_spacing: Sequence[float] = (1.0,)) -> "RegularStepGradientDescentSettings":
        """Read ``level``'s settings; step-length defaults halve per level (16/2^L, 0.5/2^L).

        No default depends on the images: ``number_of_parameters`` and the spacings are accepted for the
        common settings interface and not read.

        Raises:
            ValueError: ``RelaxationFactor`` outside ``[0, 1)``.
        """
        g = lambda name, default, typ=float: pmap.get(name, level=level, default=default, type=typ,
                                                     prefix="Optimizer0")
        s = cls(maximum_number_of_iterations=g("MaximumNumberOfIterations", 500, UInt),
                maximum_step_length=g("MaximumStepLength", 16.0 / 2 ** level),
                minimum_step_length=g("MinimumStepLength", 0.5 / 2 ** level),
                minimum_gradient_magnitude=g("MinimumGradientMagnitude", 1e-8),
                relaxation_factor=g("RelaxationFactor", 0.5),
                maximum_number_of_sampling_attempts=g("MaximumNumberOfSamplingAttempts", 0, int),
                new_samples_every_iteration=g("NewSamplesEveryIteration", False, bool))
        if not 0.0 <= s.relaxation_factor < 1.0:
            raise ValueError(f"(RelaxationFactor {s.relaxation_factor}) must be in [0, 1)")
        return s


@dataclass
class QuasiNewtonLBFGSSettings:
    """Per-level QuasiNewtonLBFGS settings with elastix's defaults (docs/design.md §E9.4)."""

    maximum_number_of_iterations: int = 100
    maximum_number_of_line_search_iterations: int = 20
    step_length: float = 1.0
    line_search_value_tolerance: float = 1e-4
    line_search_gradient_tolerance: float = 0.9
    gradient_magnitude_tolerance: float = 1e-6
    lbfgs_update_accuracy: int = 5
    stop_if_wolfe_not_satisfied: bool = True
    generate_line_search_iterations: bool = False
    new_samples_every_iteration: bool = False

    @classmethod
    def from_parameter_map(cls, pmap: ParameterMap, level: int, number_of_parameters: int = 1,
                           fixed_spacing: Sequence[float] = (1.0,),
                           moving_spacing: Sequence[float] = (1.0,)) -> "QuasiNewtonLBFGSSettings":
        """Read ``level``'s settings with elastix's lookup rules (``Optimizer0`` prefix).

        ``StopIfWolfeNotSatisfied`` is off only for the exact string ``"false"`` and
        ``GenerateLineSearchIterations`` (entry 0, all levels) on only for ``"true"``, as elastix
        compares the strings. ``MaximumNumberOfLineSearchIterations`` 0 counts as 1 (ITK clamp);
        negative tolerances count as 0.
        No default depends on the images: ``number_of_parameters`` and the spacings are accepted for the
        common settings interface and not read.

        Args:
            pmap: :class:`elastix_bridge.core.parameters.ParameterMap`.
            level: resolution level (0 = coarsest).

        Raises:
            elastix_bridge.core.parameters.ParameterError: a value of the wrong form (e.g. a negative
                ``MaximumNumberOfIterations``, which elastix reads as unsigned).
            ValueError: ``LineSearchGradientTolerance < LineSearchValueTolerance``. elastix would only
                log the line search's exception at the first iteration and keep the initial
                transform; the bridge refuses the map before any computation instead.

        Source: ``elxQuasiNewtonLBFGS.hxx`` ``BeforeRegistration``, ``BeforeEachResolution``;
        ``elxOptimizerBase.hxx`` (``NewSamplesEveryIteration``).
        """
        g = lambda name, default, typ=float: pmap.get(name, level=level, default=default, type=typ,
                                                     prefix="Optimizer0")
        s = cls(
            maximum_number_of_iterations=g("MaximumNumberOfIterations", 100, UInt),
            maximum_number_of_line_search_iterations=max(1, g("MaximumNumberOfLineSearchIterations", 20, UInt)),
            step_length=g("StepLength", 1.0),
            line_search_value_tolerance=max(0.0, g("LineSearchValueTolerance", 1e-4)),
            line_search_gradient_tolerance=max(0.0, g("LineSearchGradientTolerance", 0.9)),
            gradient_magnitude_tolerance=g("GradientMagnitudeTolerance", 1e-6),
            lbfgs_update_accuracy=g("LBFGSUpdateAccuracy", 5, UInt),
            stop_if_wolfe_not_satisfied=g("StopIfWolfeNotSatisfied", "true", str) != "false",
            generate_line_search_iterations=pmap.get("GenerateLineSearchIterations", default="false") == "true",
            new_samples_every_iteration=g("NewSamplesEveryIteration", False, bool),
        )
        s.line_search().check()
        return s

    def line_search(self) -> MoreThuenteLineSearch:
        """The level's :class:`~elastix_bridge.engine.optimizers.line_search.MoreThuenteLineSearch`."""
        return MoreThuenteLineSearch(maximum_number_of_iterations=self.maximum_number_of_line_search_iterations,
                                     initial_step_length=self.step_length,
                                     value_tolerance=self.line_search_value_tolerance,
                                     gradient_tolerance=self.line_search_gradient_tolerance)
