"""The user-facing call: ``elastix_registration_method`` with itk-elastix's signature.

Routing (one stage per parameter map; ``engine="auto"``): a parameter object without any
``(Metric "Impact")`` map goes unchanged to ``itk.elastix_registration_method`` (real elastix);
Impact maps run on the bridge engine (``engine="bridge"`` / ``"elastix"`` send every map to one
side). The result image of a bridge stage is produced by itk-elastix's transformix from the written
TransformParameters map, so what users get is exactly what transformix applies.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger("elastix_bridge")


def uses_impact(parameter_map) -> bool:
    """Whether a :class:`~elastix_bridge.parameters.ParameterMap` asks for the Impact metric."""
    return "Impact" in parameter_map.values("Metric")


@contextlib.contextmanager
def _logging_to(console: bool, file: Optional[Path]):
    """Attach console/file handlers to the ``elastix_bridge`` logger for one call."""
    handlers = []
    if console:
        handlers.append(logging.StreamHandler())
    if file is not None:
        handlers.append(logging.FileHandler(file, mode="w"))
    previous, propagate = log.level, log.propagate
    for h in handlers:
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
    if handlers:
        log.setLevel(logging.INFO)
        log.propagate = False  # the handlers above print; the root logger must not print again
    try:
        yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(previous)
        log.propagate = propagate


def _as_float(image):
    """Cast an itk.Image to float pixels (elastix's internal pixel type)."""
    import itk

    dim = image.GetImageDimension()
    if itk.template(image)[1][0] is itk.F:
        return image
    return itk.cast_image_filter(image, ttype=(type(image), itk.Image[itk.F, dim]))


ENGINES = ("auto", "elastix", "bridge")


def elastix_registration_method(fixed_image, moving_image, parameter_object=None, fixed_mask=None,
                                moving_mask=None, log_to_console: bool = False, output_directory=None,
                                log_to_file: bool = False, log_file_name: str = "elastix.log",
                                engine: str = "auto", **kwargs):
    """Register ``moving_image`` to ``fixed_image``; drop-in for ``itk.elastix_registration_method``.

    Args:
        fixed_image, moving_image: ``itk.Image`` of equal dimension (any scalar pixel type).
        parameter_object: ``itk.ParameterObject``, a parameter map dict, or a list of them. None
            means itk-elastix's defaults (no Impact: runs on elastix).
        fixed_mask, moving_mask: ``itk.Image`` masks (non-zero = inside), or None.
        log_to_console: print the registration log.
        output_directory: existing folder for ``TransformParameters.<i>.txt``, ``result.<i>.<fmt>``,
            ``IterationInfo.<i>.R<r>.txt`` and the log, as elastix writes them.
        log_to_file, log_file_name: write the log into ``output_directory``.
        engine: ``"auto"`` (maps with ``(Metric "Impact")`` on the bridge engine, the others on
            elastix), ``"elastix"`` (everything on itk-elastix, e.g. with a native IMPACT plugin) or
            ``"bridge"`` (everything on the bridge engine, to compare it with elastix).
        **kwargs: further itk-elastix keywords, passed on unchanged for elastix stages.

    Returns:
        ``(result_image, transform_parameter_object)`` like itk-elastix: the moving image resampled
        by transformix onto the fixed grid, and an ``itk.ParameterObject`` with one
        TransformParameters map per stage.

    Raises:
        elastix_bridge.loader.ImpactUnavailableError: torch, plugin or device problems.
        ValueError (and subclasses): invalid parameter maps, models or images, naming the cause.
    """
    import itk

    from .image_io import write_image
    from .parameters import parameter_maps_from_object
    from .transform_io import to_parameter_object, write_transform_parameter_file

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    maps = [] if parameter_object is None else parameter_maps_from_object(parameter_object)
    if engine == "bridge" and not maps:
        raise ValueError("engine='bridge' needs a parameter object: the bridge engine has no default maps")
    on_bridge = engine == "bridge" or (engine == "auto" and any(uses_impact(m) for m in maps))
    if not on_bridge:
        call = dict(kwargs, log_to_console=log_to_console)
        if parameter_object is not None:
            call["parameter_object"] = parameter_object if not maps else to_parameter_object(maps)
        for key, value in (("fixed_mask", fixed_mask), ("moving_mask", moving_mask),
                           ("output_directory", None if output_directory is None else str(output_directory))):
            if value is not None:
                call[key] = value
        if output_directory is not None and log_to_file:
            call.update(log_to_file=True, log_file_name=log_file_name)
        return itk.elastix_registration_method(fixed_image, moving_image, **call)

    unsupported = sorted(k for k in kwargs if k not in ("number_of_threads", "initial_transform_parameter_file_name"))
    if unsupported:
        raise ValueError(f"elastix_registration_method: {', '.join(unsupported)} not supported yet for parameter "
                         "objects run on the bridge engine")
    if engine == "auto" and not all(uses_impact(m) for m in maps):
        raise ValueError("the parameter object mixes Impact maps with other maps; chains across the two engines are "
                         "not supported yet. Run them with engine='bridge' (every map on the bridge engine) or one "
                         "at a time.")

    out = None if output_directory is None else Path(output_directory)
    if out is not None and not out.is_dir():
        raise FileNotFoundError(f"output directory {out} does not exist; create it first (elastix requires it)")
    logfile = out / log_file_name if out is not None and log_to_file else None
    from .engine.initial_transforms import TransformChain, chain_from_file
    from .engine.registration import run_stage

    t0 = kwargs.get("initial_transform_parameter_file_name")
    initial_maps = chain_from_file(t0) if t0 else []
    stage_maps = []
    with _logging_to(log_to_console, logfile), _threads(kwargs.get("number_of_threads")):
        for k, pmap in enumerate(maps):
            # Stage k starts from stages 0..k-1 (and -t0); on disk, its map names the previous file.
            chain = TransformChain(initial_maps + stage_maps) if initial_maps or stage_maps else None
            previous_file = (str(out / f"TransformParameters.{k - 1}.txt") if k and out is not None
                             else (str(Path(t0).resolve()) if t0 and not k else None))
            stage = run_stage(fixed_image, moving_image, pmap, fixed_mask, moving_mask, elastix_level=k,
                              output_directory=out, initial_transform=chain, initial_transform_file=previous_file)
            log.info("Bridge-engine stage %d took %.1f s.", k, stage.seconds)
            tp_map = stage.transform_parameter_map
            # itk-elastix reports the input pixel type as the result type.
            tp_map.set("ResultImagePixelType", ["float"])
            # Result files are MetaImage .mha unless the map asks otherwise (one file, no .raw beside it).
            fmt = pmap.get("ResultImageFormat", default="mha")
            tp_map.set("ResultImageFormat", [fmt])
            stage_maps.append(tp_map)
            if out is not None:
                write_transform_parameter_file(tp_map, out / f"TransformParameters.{k}.txt")
        # In memory, map i's initial transform is map i-1 (the file names are ignored, elastix_spec §1.7).
        tp_object = to_parameter_object(initial_maps + stage_maps)
        result = itk.transformix_filter(_as_float(moving_image), tp_object)
        if out is not None and maps[-1].get("WriteResultImage", default=True, type=bool):
            write_image(result, out / f"result.{len(maps) - 1}.{fmt}")
    return result, tp_object


@contextlib.contextmanager
def _threads(n):
    """Use ``n`` torch threads (elastix ``-threads``) for one call, then restore the user's setting."""
    if not n:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
