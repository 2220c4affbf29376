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
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from threadpoolctl import threadpool_limits

from elastix_bridge.core.output_folder import (check_inputs_outside_outputs, is_held, owned_output_folder,
                                               prepare_output_folder)
from elastix_bridge.core.parameters import parameter_maps_from_object
from elastix_bridge.core.result_images import write_result_image
from elastix_bridge.core.engines import stage_engines, uses_impact
from elastix_bridge.core.transform_io import to_parameter_object, write_transform_parameter_file
from elastix_bridge.plan import RegistrationPlan, check_resources, is_memory_error, memory_error, plan_registration
from elastix_bridge.progress import StageProgress, elastix_stage_bar
from elastix_bridge.runtime import itk_elastix
from elastix_bridge.runtime.itk_elastix import as_float_image, given_keywords
from elastix_bridge.runtime.loader import require_torch
from elastix_bridge.runtime.native_plugins import preload_native_plugin
from elastix_bridge.transform_check import check_stage
from elastix_bridge.validation import CHAIN_KEYWORDS, check_threads, initial_transform_maps, validate_request

if TYPE_CHECKING:  # pragma: no cover
    import itk

    from elastix_bridge.core.parameters import ParameterMap

log = logging.getLogger("elastix_bridge")

__all__ = ["check_bridge_models", "elastix_registration_method"]


@contextlib.contextmanager
def _logging_to(console: bool, file: Optional[Path], append: bool = False):
    """Attach console/file handlers to the ``elastix_bridge`` logger for one call; yields the file handler."""
    handlers = []
    if console:
        handlers.append(logging.StreamHandler())
    if file is not None:
        handlers.append(logging.FileHandler(file, mode="a" if append else "w"))
    previous, propagate = log.level, log.propagate
    for h in handlers:
        h.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(h)
    if handlers:
        log.setLevel(logging.INFO)
        log.propagate = False  # the handlers above print; the root logger must not print again
    try:
        yield handlers[-1] if file is not None else None
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(previous)
        log.propagate = propagate


def elastix_registration_method(fixed_image: itk.Image, moving_image: itk.Image,
                                parameter_object: itk.ParameterObject | Mapping[str, Any] | Sequence[Any] | None = None,
                                fixed_mask: Optional[itk.Image] = None, moving_mask: Optional[itk.Image] = None,
                                log_to_console: bool = False, output_directory: str | Path | None = None,
                                log_to_file: bool = False, log_file_name: str = "elastix.log",
                                engine: str = "auto", progress: bool = False,
                                **kwargs: Any) -> tuple[itk.Image, itk.ParameterObject]:
    """Register ``moving_image`` to ``fixed_image``; drop-in for ``itk.elastix_registration_method``.

    Each parameter map is one stage, run on its engine (:func:`stage_engines`) and started from the
    stages before it (docs/design.md §E1.7), so a chain may mix elastix stages (e.g. an affine
    Mattes MI stage) with Impact stages. A parameter object without Impact maps goes unchanged to
    itk-elastix in one call.

    Args:
        fixed_image, moving_image: ``itk.Image`` of equal dimension (any scalar pixel type).
        parameter_object: ``itk.ParameterObject``, a parameter map dict, or a list of them. None
            means itk-elastix's defaults (no Impact: runs on elastix).
        fixed_mask, moving_mask: ``itk.Image`` masks (non-zero = inside), or None.
        log_to_console: print the registration log.
        output_directory: existing folder for ``TransformParameters.<i>.txt``, ``result.<i>.<fmt>``,
            ``IterationInfo.<i>.R<r>.txt`` and the log, numbered by stage as elastix numbers them.
            Each result image is cast in memory to the map's ``ResultImagePixelType`` (float when the
            map names none, as itk-elastix writes it) and written once
            (:func:`elastix_bridge.core.result_images.write_result_image`).
            The call owns it (:func:`elastix_bridge.core.output_folder.owned_output_folder`): a lock
            against a second run, the outputs of an earlier run removed first (other files are
            kept), and after a failure this call's outputs removed and the error appended to the log.
        log_to_file, log_file_name: write the log into ``output_directory``.
        engine: ``"auto"`` (maps with ``(Metric "Impact")`` on the bridge engine, the others on
            elastix), ``"elastix"`` (everything on itk-elastix, e.g. with a native IMPACT plugin) or
            ``"bridge"`` (everything on the bridge engine, to compare it with elastix). When
            ``$ELASTIX_BRIDGE_NATIVE_PLUGIN`` names a native upstream plugin, it is preloaded before
            an Impact map goes to elastix, and ``auto`` sends Impact maps to elastix
            (:mod:`elastix_bridge.runtime.native_plugins`).
        progress: show a progress bar per resolution level of each bridge stage (iteration, metric
            value, elapsed time) and the elapsed time of each elastix stage, on stderr.
        **kwargs: further itk-elastix keywords. With a bridge stage in the chain only
            ``number_of_threads``, ``initial_transform_parameter_file_name`` and
            ``initial_transform_parameter_object`` are understood.

    Returns:
        ``(result_image, transform_parameter_object)`` like itk-elastix: the moving image resampled
        by transformix onto the fixed grid, and an ``itk.ParameterObject`` with the initial maps
        (if any) followed by one TransformParameters map per stage.

    Every itk-elastix call runs in a forked child process
    (:func:`elastix_bridge.runtime.itk_elastix.run_itk_elastix_in_child`), so Ctrl-C (or an exception
    raised by the program's own signal handler) stops an elastix stage at once: the child is killed,
    nothing runs on in the background, and the call's outputs are removed as after any failure. This
    function installs no signal handlers (the command does: docs/outputs_and_resources.md).

    Raises:
        elastix_bridge.runtime.itk_elastix.ElastixStageError: an elastix stage failed; the message names
            the stage, its map and elastix's cause from its log.
        KeyboardInterrupt: Ctrl-C; the running stage is stopped first.
        elastix_bridge.runtime.loader.ImpactUnavailableError: torch, plugin or device problems (including
            elastix_bridge.runtime.native_plugins.NativePluginError for a native plugin that cannot load).
        ValueError (and subclasses): invalid parameter maps, models or images, naming the cause; every
            map of the chain and the images are checked before the first stage runs
            (:func:`elastix_bridge.validation.validate_request`, ``docs/bad_input.md``); feature models
            that break the contract (:func:`check_bridge_models`) before ``output_directory`` is taken.
        elastix_bridge.engine.errors.NonFiniteMetricError: a NaN or Inf metric value or derivative in a
            bridge stage, naming the stage, level, iteration and likely cause; no result is written.
        TypeError: an image or mask that is not an ``itk.Image`` (a path, a numpy array), saying what
            to pass.
        FileNotFoundError: ``output_directory`` or an initial transform file does not exist.
        elastix_bridge.core.output_folder.OutputFolderError: ``output_directory`` is a file.
        elastix_bridge.core.output_folder.OutputFolderBusyError: another run holds ``output_directory``.
        elastix_bridge.plan.InsufficientMemoryError: the estimate exceeds the available memory (before
            any work), or an allocation failed (naming the stage, level, estimate and keys).
    """
    maps = [] if parameter_object is None else parameter_maps_from_object(parameter_object)
    if parameter_object is not None and not maps:  # an empty itk.ParameterObject: itk-elastix fails inside the filter
        raise ValueError("parameter_object holds no parameter map, so there is nothing to run; add one (e.g. "
                         "parameter_object.AddParameterMap(parameter_object.GetDefaultParameterMap('rigid'))), or "
                         "pass None for itk-elastix's default maps")
    if engine == "bridge" and not maps:
        raise ValueError("engine='bridge' needs a parameter object: the bridge engine has no default maps")
    native = None
    if engine != "bridge" and any(uses_impact(m) for m in maps):
        native = preload_native_plugin()  # None unless $ELASTIX_BRIDGE_NATIVE_PLUGIN is set
    engines = stage_engines(maps, engine, native_plugin=native is not None)
    validate_request(maps, engines, fixed_image, moving_image, fixed_mask, moving_mask, kwargs)
    out = None if output_directory is None else Path(output_directory)
    if out is not None:  # "" (not "."), and an initial transform that the run would remove as an earlier output
        prepare_output_folder(output_directory, "output_directory", create=False)
        t0 = kwargs.get("initial_transform_parameter_file_name")
        check_inputs_outside_outputs(out, {"initial transform file": t0}, log_file_name, "output_directory")
    if out is not None and not out.is_dir():
        prepare_output_folder(out, "output_directory", create=False)  # a file: a named error
        raise FileNotFoundError(f"output directory {out} does not exist; create it first (elastix requires it)")
    # Without a bridge stage and without files, one itk-elastix call (per-stage runs only to show progress bars);
    # with an output folder, per stage, so that the bridge writes each result in its pixel type.
    one_call = "bridge" not in engines and (not maps or set(kwargs) - set(CHAIN_KEYWORDS)
                                            or (out is None and not progress))
    check_bridge_models(fixed_image, maps, engines)  # before the folder is taken: a refused model removes nothing
    plan = _resource_plan(fixed_image, moving_image, maps, fixed_mask, moving_mask, engine, out)
    owner = (contextlib.nullcontext() if out is None else
             owned_output_folder(out, log_file_name, flag="output_directory", error_to_log=log_to_file))
    with owner:
        if one_call:
            result = _one_itk_elastix_call(fixed_image, moving_image, parameter_object, maps, fixed_mask, moving_mask,
                                           log_to_console, out, log_to_file, log_file_name, plan, kwargs)
            if maps:  # each stage's transform checked as in a chain, the numbers appended to elastix's log
                _check_stages(maps, engines, result[1], fixed_image, fixed_mask, log_to_console,
                              out / log_file_name if out is not None and log_to_file else None)
            return result
        chain = ChainInputs(fixed_image, moving_image, maps, engines, fixed_mask, moving_mask,
                            kwargs.get("initial_transform_parameter_file_name"),
                            kwargs.get("initial_transform_parameter_object"))
        settings = ChainSettings(out, log_to_console, out / log_file_name if out is not None and log_to_file else None,
                                 progress, kwargs.get("number_of_threads"), plan)
        return _run_chain(chain, settings)


def check_bridge_models(fixed_image: itk.Image, maps: Sequence[ParameterMap], engines: Sequence[str]) -> None:
    """Check the feature models of every Impact map on the bridge engine against the contract, before any work.

    Raises:
        elastix_bridge.runtime.loader.ImpactModelError, elastix_bridge.runtime.loader.ImpactUnavailableError:
            see :func:`elastix_bridge.engine.registration.check_stage_models`.
    """
    for pmap, engine in zip(maps, engines):
        if engine == "bridge" and uses_impact(pmap):
            require_torch()  # its own message when torch cannot be imported, before the engine imports it
            from elastix_bridge.engine.registration import check_stage_models  # deferred: the engine imports torch

            check_stage_models(fixed_image, pmap)


def _resource_plan(fixed_image, moving_image, maps, fixed_mask, moving_mask, engine, out):
    """The memory plan of the run, refusing one that cannot fit (unless the command, owning ``out``, checked)."""
    if not maps or not all(hasattr(i, "GetLargestPossibleRegion") for i in (fixed_image, moving_image)):
        return None  # itk-elastix's defaults, or arguments the registration itself refuses
    if out is not None and is_held(out):
        return plan_registration(fixed_image, moving_image, maps, fixed_mask, moving_mask, engine)
    return check_resources(fixed_image, moving_image, maps, fixed_mask, moving_mask, engine)


def _one_itk_elastix_call(fixed_image, moving_image, parameter_object, maps, fixed_mask, moving_mask, log_to_console,
                          out, log_to_file, log_file_name, plan, kwargs):
    """Every map in one itk-elastix call (no bridge stage), in a child process (interruptible, its error named).

    elastix writes its log into ``out`` (a scratch name there unless ``log_to_file``) or, without
    ``out``, into a temporary folder: the cause of a failure is read from it.
    """
    call = dict(kwargs, log_to_console=log_to_console)
    if parameter_object is not None:
        call["parameter_object"] = parameter_object if not maps else to_parameter_object(maps)
    call.update(given_keywords(fixed_mask=fixed_mask, moving_mask=moving_mask))
    folder = Path(tempfile.mkdtemp(prefix="elastix-bridge-")) if out is None else out
    # A scratch log name (SCRATCH_PATTERN, so a killed run's is cleared by the next) when no log was asked for.
    log_name = log_file_name if out is not None and log_to_file else f".stage0-{os.getpid()}.log"
    try:
        return itk_elastix.run_itk_elastix_in_child(
            fixed_image, moving_image, "the elastix run", folder, with_result=True, log_file_name=log_name,
            full_log=out / log_file_name if out is not None and log_to_file else None, **call)
    except Exception as error:
        if is_memory_error(error):
            raise memory_error(error, 0 if len(maps) == 1 else None, "elastix", None, plan) from error
        raise
    finally:
        if out is None:
            shutil.rmtree(folder, ignore_errors=True)
        elif log_name != log_file_name:
            with contextlib.suppress(OSError):
                (out / log_name).unlink()


def _check_stages(maps, engines, tp_object, fixed_image, fixed_mask, log_to_console, log_path) -> None:
    """:func:`~elastix_bridge.transform_check.check_stage` for every stage of a finished itk-elastix call."""
    tp_maps = parameter_maps_from_object(tp_object)
    first = len(tp_maps) - len(maps)  # the initial transforms, if itk-elastix returned them
    with _logging_to(log_to_console, log_path, append=True):
        for k, (pmap, engine) in enumerate(zip(maps, engines)):
            check_stage(k, pmap, tp_maps[:first + k + 1], fixed_image, fixed_mask, engine)


@dataclass(frozen=True)
class ChainInputs:
    """What a chain of stages registers (:func:`_run_chain`).

    Attributes:
        fixed_image, moving_image: ``itk.Image`` of equal dimension.
        maps: one :class:`~elastix_bridge.core.parameters.ParameterMap` per stage, in order.
        engines: ``"bridge"`` / ``"elastix"`` per map (:func:`~elastix_bridge.core.engines.stage_engines`).
        fixed_mask, moving_mask: ``itk.Image`` masks, or None.
        initial_transform_file: elastix ``-t0`` (itk-elastix's ``initial_transform_parameter_file_name``), or None.
        initial_transform_object: itk-elastix's ``initial_transform_parameter_object``, or None.
    """

    fixed_image: Any
    moving_image: Any
    maps: Sequence[ParameterMap]
    engines: Sequence[str]
    fixed_mask: Any = None
    moving_mask: Any = None
    initial_transform_file: Optional[str] = None
    initial_transform_object: Any = None


@dataclass(frozen=True)
class ChainSettings:
    """Where a chain writes and how it runs (:func:`_run_chain`).

    Attributes:
        output_directory: the folder for elastix's files (numbered by stage), or None to write nothing.
        log_to_console: print the registration log.
        log_file: the log file (in ``output_directory``), or None.
        progress: progress bars per stage on stderr.
        number_of_threads: elastix ``-threads`` for the call (:func:`limited_threads`), or None for the user's settings.
        plan: the run's memory plan, to name the stage and level of an allocation failure; or None.
    """

    output_directory: Optional[Path] = None
    log_to_console: bool = False
    log_file: Optional[Path] = None
    progress: bool = False
    number_of_threads: Optional[int] = None
    plan: Optional[RegistrationPlan] = None


def _run_chain(chain: ChainInputs, settings: ChainSettings):
    """Run the stages in order, each on its engine, each starting from the ones before it.

    Returns:
        ``(result_image, transform_parameter_object)`` as :func:`elastix_registration_method` does.
    """
    import itk  # deferred: itk's import takes seconds, and only a running chain needs transformix

    fixed_image, moving_image, out = chain.fixed_image, chain.moving_image, settings.output_directory
    t0 = chain.initial_transform_file
    initial_maps = initial_transform_maps({"initial_transform_parameter_file_name": t0,
                                           "initial_transform_parameter_object": chain.initial_transform_object})
    stage_maps = []
    with _logging_to(settings.log_to_console, settings.log_file) as log_file, \
            limited_threads(settings.number_of_threads) as number_of_threads:
        for k, (pmap, engine) in enumerate(zip(chain.maps, chain.engines)):
            # On disk, stage k's map names the previous file (elastix's sequences and -t0).
            previous_file = (str(out / f"TransformParameters.{k - 1}.txt") if k and out is not None
                             else (str(Path(t0).resolve()) if t0 and not k else None))
            tic = time.perf_counter()
            level = []  # the resolution level the bridge engine is at, to name it in a memory error
            try:
                if engine == "bridge":
                    bars = StageProgress(k, pmap) if settings.progress else None
                    try:
                        tp_map = _bridge_stage(fixed_image, moving_image, pmap, k, initial_maps + stage_maps,
                                               chain.fixed_mask, chain.moving_mask, out, previous_file, bars,
                                               level.append)
                    finally:
                        if bars is not None:
                            bars.close()
                else:
                    bar = elastix_stage_bar(k) if settings.progress else None
                    try:
                        tp_map = _elastix_stage(fixed_image, moving_image, pmap, k, initial_maps + stage_maps,
                                                chain.fixed_mask, chain.moving_mask, out, previous_file,
                                                settings.log_to_console, log_file, number_of_threads,
                                                None if bar is None else bar.refresh)
                    finally:
                        if bar is not None:
                            bar.close()
            except Exception as error:
                if is_memory_error(error):
                    raise memory_error(error, k, engine, level[-1] if level else None, settings.plan) from error
                raise
            log.info("Stage %d (%s engine) took %.1f s.", k, engine, time.perf_counter() - tic)
            stage_maps.append(tp_map)
            check_stage(k, pmap, initial_maps + stage_maps, fixed_image, chain.fixed_mask, engine)
            # In memory, map i's initial transform is map i-1 (file names are ignored, docs/design.md §E1.7).
            tp_object = to_parameter_object(initial_maps + stage_maps)
            result = None
            if out is not None and engine == "bridge":
                write_transform_parameter_file(tp_map, out / f"TransformParameters.{k}.txt")
            if out is not None and pmap.get("WriteResultImage", default=True, type=bool):  # as elastix: every stage's
                # Made here for both engines, cast in memory and written once (core/result_images.py).
                result = itk.transformix_filter(as_float_image(moving_image), tp_object)
                write_result_image(result, out, k, pmap, default_pixel_type="float")
        if result is None:
            result = itk.transformix_filter(as_float_image(moving_image), tp_object)
    return result, tp_object


def _bridge_stage(fixed_image, moving_image, pmap, k, chain_maps, fixed_mask, moving_mask, out, previous_file,
                  on_iteration=None, on_level=None):
    """One stage on the bridge engine; returns its TransformParameters map."""
    require_torch()  # its own message when torch cannot be imported, before the engine imports it
    from elastix_bridge.engine.registration import run_stage  # deferred: the engine imports torch
    from elastix_bridge.engine.transforms.initial import TransformChain  # deferred: the engine imports torch

    chain = TransformChain(chain_maps) if chain_maps else None
    stage = run_stage(fixed_image, moving_image, pmap, fixed_mask, moving_mask, elastix_level=k,
                      output_directory=out, initial_transform=chain, initial_transform_file=previous_file,
                      on_iteration=on_iteration, on_level=on_level)
    tp_map = stage.transform_parameter_map
    # itk-elastix reports the input pixel type as the result type.
    tp_map.set("ResultImagePixelType", ["float"])
    # Result files are MetaImage .mha unless the map asks otherwise (one file, no .raw beside it).
    tp_map.set("ResultImageFormat", [pmap.get("ResultImageFormat", default="mha")])
    return tp_map


def _elastix_stage(fixed_image, moving_image, pmap, k, chain_maps, fixed_mask, moving_mask, out, previous_file,
                   log_to_console, log_file, number_of_threads, on_poll=None):
    """One stage on itk-elastix, started from ``chain_maps`` in memory; returns its TransformParameters map.

    elastix runs in a child process (:func:`~elastix_bridge.runtime.itk_elastix.run_itk_elastix_in_child`:
    interruptible at once, a failure names elastix's cause) and numbers its files 0 in a run of one
    map: they are written to a scratch folder (inside ``out``, else temporary) and moved to stage
    ``k``'s names (``IterationInfo.<k>.R<r>.txt``, ``TransformParameters.<k>.txt`` as elastix wrote
    it, naming ``previous_file`` as its initial transform); its log is appended to the chain's log,
    also when it failed. elastix writes no result image: :func:`_run_chain` writes it in its pixel type.
    """
    quiet = pmap.copy()
    quiet.set("WriteResultImage", ["false"])
    call = dict(parameter_object=to_parameter_object([quiet]), log_to_console=log_to_console)
    if chain_maps:
        first = chain_maps[0].copy()
        first.set("InitialTransformParameterFileName", ["NoInitialTransform"])
        call["initial_transform_parameter_object"] = to_parameter_object([first] + chain_maps[1:])
    call.update(given_keywords(fixed_mask=fixed_mask, moving_mask=moving_mask, number_of_threads=number_of_threads))
    scratch = Path(tempfile.mkdtemp(prefix=f".stage{k}-", dir=out))
    try:
        _, tp = itk_elastix.run_itk_elastix_in_child(
            fixed_image, moving_image, f"stage {k} (elastix, parameter map {k})", scratch, on_poll=on_poll,
            full_log=None if log_file is None else log_file.baseFilename, **call)
        for path in scratch.iterdir() if out is not None else ():
            name = path.name
            if name.startswith("IterationInfo.0."):
                os.replace(path, out / name.replace(".0.", f".{k}.", 1))
            elif name == "TransformParameters.0.txt":
                text = re.sub(r'\(InitialTransformParameterFileName "[^"]*"\)',
                              f'(InitialTransformParameterFileName "{previous_file or "NoInitialTransform"}")',
                              path.read_text())
                path.write_text(text)
                os.replace(path, out / f"TransformParameters.{k}.txt")
    finally:
        if log_file is not None and (scratch / "elastix.log").is_file():  # also a failed stage's log
            log_file.stream.write((scratch / "elastix.log").read_text(errors="replace"))
            log_file.flush()
        shutil.rmtree(scratch, ignore_errors=True)
    tp_map = parameter_maps_from_object(tp)[-1]
    tp_map.set("InitialTransformParameterFileName", [previous_file or "NoInitialTransform"])
    return tp_map


@contextlib.contextmanager
def limited_threads(n):
    """Use ``n`` threads (elastix ``-threads``) for one call, then restore the user's settings; yields
    the count used (``n`` when it is falsy: the user's settings stay).

    Every pool the process has: torch's intra-op threads, and through threadpoolctl the BLAS libraries
    (numpy's and scipy's OpenBLAS, whose own threads would otherwise compete with torch's) and OpenMP
    runtimes. A count above the cores this process may use is lowered to them with a warning
    (:func:`elastix_bridge.validation.check_threads`; elastix only clamps it to ITK_MAX_THREADS).
    """
    if not n:
        yield n
        return
    import torch  # deferred: torch is loaded only when a call sets its thread count

    n = check_threads(int(n), "number_of_threads", warn=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        torch.set_num_threads(previous)
