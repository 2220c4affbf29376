"""The call's own arguments (``number_of_threads``, itk-elastix keywords) and :func:`validate_request`,
the one check of a whole request before any work."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence

from elastix_bridge.runtime.itk_elastix import check_keywords
from elastix_bridge.validation.images import _header_geometry, validate_images
from elastix_bridge.validation.initial_transforms import check_initial_transforms
from elastix_bridge.validation.maps import validate_maps

if TYPE_CHECKING:  # pragma: no cover
    import itk

    from elastix_bridge.core.parameters import ParameterMap

log = logging.getLogger("elastix_bridge")


def available_cores() -> int:
    """The CPU cores this process may run on: ``os.sched_getaffinity`` (which honours ``taskset``,
    cgroup cpusets and a Slurm allocation), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def check_threads(number_of_threads: Any, what: str = "number_of_threads", warn: bool = False) -> Optional[int]:
    """Check a thread count (elastix ``-threads``) and return the count to use.

    elastix passes ``-threads`` to ``itk::MultiThreaderBase::SetGlobalMaximumNumberOfThreads``
    (Core/Kernel/elxMainBase.cxx), which clamps it to ``ITK_MAX_THREADS`` without a word. Here a
    count above the cores this process may use (:func:`available_cores`) is lowered to them: more
    threads than cores only wait for one another (``-threads 10000`` ran 7x slower on 2 cores, and
    ``-threads 100000`` made torch's thread pools fail).

    Args:
        number_of_threads: None (all cores) or an integer >= 1.
        what: how messages name it (``-threads``, ``number_of_threads``).
        warn: log a warning when the count is lowered (once per run: where the count is applied).

    Returns:
        None, or ``min(number_of_threads, available_cores())``.

    Raises:
        ValueError: not an integer, or below 1.
    """
    if number_of_threads is None:
        return None
    if isinstance(number_of_threads, bool) or not isinstance(number_of_threads, int) or number_of_threads < 1:
        raise ValueError(f"{what} {number_of_threads!r}: the number of threads must be an integer >= 1; "
                         f"leave it out to use all cores")
    cores = available_cores()
    if number_of_threads <= cores:
        return number_of_threads
    if warn:
        log.warning("%s %d is more than the %d CPU core(s) this process may use; using %d (more threads than "
                    "cores only wait for one another)", what, number_of_threads, cores, cores)
    return cores


#: Keywords of ``elastix_registration_method`` that a chain with bridge stages understands.
CHAIN_KEYWORDS = ("number_of_threads", "initial_transform_parameter_file_name", "initial_transform_parameter_object")


def validate_request(maps: Sequence[ParameterMap], engines: Sequence[str], fixed_image: itk.Image,
                     moving_image: itk.Image, fixed_mask: Optional[itk.Image] = None,
                     moving_mask: Optional[itk.Image] = None,
                     keywords: Optional[dict] = None, names: Optional[Sequence[str]] = None) -> None:
    """The one check of a registration request before any work (no file written, no stage run).

    The command also calls :func:`validate_maps` on its maps alone, before it reads the images.

    Args:
        maps: the chain's :class:`~elastix_bridge.core.parameters.ParameterMap` list.
        engines: engine per map (``"bridge"`` / ``"elastix"``, :func:`elastix_bridge.core.engines.stage_engines`).
        fixed_image, moving_image, fixed_mask, moving_mask: ``itk.Image`` (masks may be None).
        keywords: further keyword arguments of the call (itk-elastix's).
        names: how messages name each map (see :func:`validate_maps`).

    Raises:
        see :func:`validate_maps`, :func:`validate_images` and :func:`check_initial_transforms`; ``ValueError``
        for a keyword that a chain with bridge stages does not support, or a bad ``number_of_threads``;
        ``TypeError`` for a keyword itk-elastix does not take (a typo: "did you mean",
        :func:`elastix_bridge.runtime.itk_elastix.check_keywords`).
    """
    keywords = keywords or {}
    check_keywords(keywords, own=("engine", "progress"))  # the API's own arguments: near misses of them are named
    check_threads(keywords.get("number_of_threads"))
    if engines is not None and "bridge" in engines:
        unsupported = sorted(k for k in keywords if k not in CHAIN_KEYWORDS)
        if unsupported:
            raise ValueError(
                f"{', '.join(unsupported)}: not supported when a stage runs on the bridge engine (maps with "
                f"(Metric \"Impact\")); supported: {', '.join(CHAIN_KEYWORDS)}. Remove it, or run every map on "
                f"elastix with a native IMPACT plugin (engine='elastix')")
    dimension = validate_images(fixed_image, moving_image, fixed_mask, moving_mask)
    validate_maps(maps, engines, dimension, names, geometries=(_header_geometry(fixed_image),
                                                               _header_geometry(moving_image)))
    check_initial_transforms(maps, engines, dimension, keywords)
