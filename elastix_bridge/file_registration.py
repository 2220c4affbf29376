"""A registration from files to files: what ``elastix-bridge -f F -m M -p P -out DIR`` runs once its flags are read.

:func:`register_files` reads the images, masks and parameter files, checks everything it can before
any pixel is read, runs :func:`elastix_bridge.api.elastix_registration_method` into the output
folder it owns, and writes there what elastix writes (``TransformParameters.<k>.txt``,
``result.<k>.<fmt>``, ``IterationInfo.<k>.R<r>.txt``, ``elastix.log``) and, when asked, ``qc.png``.
The command (:mod:`elastix_bridge.cli`) calls it after parsing its flags, and the cohort runner
(:mod:`elastix_bridge.batch`) calls it for every pair, with the same arguments.

Messages name each input by its elastix flag (``fixed image (-f)``, ``-p affine.txt``), as the
command gives them: the cohort's summary repeats them per pair.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from elastix_bridge import qc
from elastix_bridge.api import check_bridge_models, elastix_registration_method
from elastix_bridge.core import image_io, run_timing
from elastix_bridge.core.files import check_input_file
from elastix_bridge.core.output_folder import check_inputs_outside_outputs, owned_output_folder, prepare_output_folder
from elastix_bridge.core.parameters import read_parameter_file
from elastix_bridge.core.engines import stage_engines
from elastix_bridge.plan import check_resources
from elastix_bridge.runtime.native_plugins import NATIVE_PLUGIN_ENV
from elastix_bridge.transform_check import collected_checks
from elastix_bridge.validation import check_threads, initial_transform_maps, validate_images, validate_maps

__all__ = ["FileRegistration", "check_maps_from_headers", "register_files"]


@dataclass(frozen=True)
class FileRegistration:
    """What :func:`register_files` did.

    Attributes:
        output_directory: the output folder, as given.
        written: the files written there (names relative to it), in the order the run wrote them.
        removed: the files of an earlier run removed first (names relative to it).
        checks: the transform check of every stage (:class:`~elastix_bridge.transform_check.StageCheck`,
            folding, volume change, displacement; in stage order).
    """

    output_directory: Path
    written: tuple
    removed: tuple
    checks: tuple

    @property
    def warnings(self) -> list:
        """Every stage's transform-check warnings, in stage order."""
        return [w for check in self.checks for w in check.warnings]


def register_files(fixed: str | os.PathLike, moving: str | os.PathLike,
                   parameter_files: str | os.PathLike | Sequence[str | os.PathLike],
                   output_directory: str | os.PathLike, *,
                   fixed_mask: Optional[str | os.PathLike] = None, moving_mask: Optional[str | os.PathLike] = None,
                   initial_transform: Optional[str | os.PathLike] = None, engine: str = "auto",
                   threads: Optional[int] = None, log_to_console: bool = True, progress: bool = False,
                   qc_figure: bool = False, command: Optional[str] = None) -> FileRegistration:
    """Register the image file ``moving`` to ``fixed`` with the maps of ``parameter_files``, into ``output_directory``.

    In this order, each before anything slower: matplotlib for ``qc_figure``; ``output_directory``
    not a file; every input a readable file; ``threads``; no input where the run writes or removes
    (also the files the ``initial_transform`` chain names); every map against the images' headers
    (:func:`check_maps_from_headers`); the pixels (:func:`elastix_bridge.validation.validate_images`);
    the memory estimate; the feature models of bridge stages. Only then is ``output_directory``
    created (if absent) and owned for the run
    (:func:`elastix_bridge.core.output_folder.owned_output_folder`: locked, an earlier run's outputs
    removed first, this run's removed again after a failure, the error appended to ``elastix.log``).

    Each map gets elastix's command-line defaults where it names none: ``(ResultImageFormat "mhd")``
    and ``(ResultImagePixelType "short")`` (itk-elastix's Python defaults differ).

    Args:
        fixed, moving: image files (any format ITK reads).
        parameter_files: one parameter file (.txt or .toml), or several: a chain, run in order.
        output_directory: the output folder (elastix ``-out``); created if absent, not empty ("").
        fixed_mask, moving_mask: mask files (non-zero = inside), or None.
        initial_transform: a TransformParameters file (elastix ``-t0``), its
            ``InitialTransformParameterFileName`` chain followed; or None.
        engine: ``"auto"``, ``"elastix"`` or ``"bridge"`` (:func:`elastix_bridge.core.engines.stage_engines`).
        threads: threads for the run (elastix ``-threads``; more than the cores this process may use
            are lowered to them, with a warning), or None for every core.
        log_to_console: print the registration log (``elastix.log`` always has it). Without it,
            the transform check's warnings are still printed on stderr.
        progress: progress bars per resolution level on stderr.
        qc_figure: also write ``qc.png`` (:func:`elastix_bridge.qc.write_qc_figure`; needs matplotlib).
        command: what the folder's lock file records as the command; default: the equivalent
            ``elastix-bridge`` command line.

    Returns:
        :class:`FileRegistration`: the files written and removed, and every stage's transform check.

    Raises:
        ImportError: ``qc_figure`` without matplotlib (with the install command).
        FileNotFoundError, IsADirectoryError, ValueError: an input that is not a readable file
            (:func:`elastix_bridge.core.files.check_input_file`), or a file of the ``initial_transform``
            chain that is missing or not a TransformParameters file.
        elastix_bridge.core.output_folder.OutputFolderError: ``output_directory`` is a file, empty, or
            holds an input under a name the run writes or removes.
        elastix_bridge.core.output_folder.OutputFolderBusyError: another run holds ``output_directory``.
        ValueError: ``threads`` not an integer >= 1; an unknown ``engine``; invalid maps or images
            (:func:`elastix_bridge.validation.validate_maps`,
            :func:`elastix_bridge.validation.validate_images`; ``docs/bad_input.md``).
        elastix_bridge.plan.InsufficientMemoryError: the run cannot fit in the available memory.
        elastix_bridge.runtime.loader.ImpactUnavailableError, elastix_bridge.runtime.loader.ImpactModelError:
            torch, the plugin, a device or a feature model cannot be used.
        KeyboardInterrupt: interrupted; this run's outputs were removed.
        Any error of :func:`elastix_bridge.api.elastix_registration_method` while it runs (this run's
        outputs removed, the error at the end of ``elastix.log``).
    """
    files = ([parameter_files] if isinstance(parameter_files, (str, bytes, os.PathLike))
             else list(parameter_files))
    if qc_figure:  # before a long registration, not after it
        qc.require_matplotlib()
    out = prepare_output_folder(output_directory, "-out", create=False)  # a file: a named error, before any reading
    inputs = {"fixed image (-f)": fixed, "moving image (-m)": moving, "fixed mask (-fMask)": fixed_mask,
              "moving mask (-mMask)": moving_mask}
    inputs.update({"parameter file (-p)" if len(files) == 1 else f"parameter file {k} (-p)": path
                   for k, path in enumerate(files)})
    for what, path in inputs.items():  # `is not None`: an empty -fMask "" is named, not taken as no mask
        if path is not None:
            check_input_file(path, what)
    threads = check_threads(threads, "-threads", warn=True)  # above the cores: lowered, with a warning
    check_inputs_outside_outputs(out, {**inputs, "initial transform (-t0)": initial_transform})  # before -t0 is read
    if initial_transform is not None:  # an empty -t0 "" is named, not taken as none
        check_inputs_outside_outputs(out, _initial_transform_files(initial_transform))  # the files its chain names
    maps_by_file = [(path, m) for path in files for m in read_parameter_file(path)]
    parameter_object = [m for _, m in maps_by_file]
    for pmap in parameter_object:  # elastix's command-line defaults; itk-elastix's Python defaults differ
        if not pmap.has("ResultImageFormat"):
            pmap.set("ResultImageFormat", ["mhd"])
        if not pmap.has("ResultImagePixelType"):  # results are cast to it before writing (core/result_images.py)
            pmap.set("ResultImagePixelType", ["short"])
    check_maps_from_headers(fixed, moving, maps_by_file, engine, initial_transform)  # before any pixel is read
    with run_timing.phase("images read"):
        fixed_image = image_io.read_image(fixed, "fixed image (-f)")
        moving_image = image_io.read_image(moving, "moving image (-m)")
        fixed_mask_image = image_io.read_mask(fixed_mask, "fixed mask (-fMask)") if fixed_mask else None
        moving_mask_image = image_io.read_mask(moving_mask, "moving mask (-mMask)") if moving_mask else None
    validate_images(fixed_image, moving_image, fixed_mask_image, moving_mask_image)  # before the estimate reads them
    check_resources(fixed_image, moving_image, parameter_object, fixed_mask_image, moving_mask_image, engine)
    check_bridge_models(fixed_image, parameter_object, _engines(parameter_object, engine))  # before -out is cleared
    kwargs = {}
    if initial_transform:
        kwargs["initial_transform_parameter_file_name"] = str(initial_transform)
    if threads is not None:
        kwargs["number_of_threads"] = threads
    if command is None:
        command = _command_line(fixed, moving, files, output_directory, fixed_mask, moving_mask, initial_transform,
                                engine, threads)
    # The folder is created only once the inputs are readable, and owned until the QC picture is written.
    with owned_output_folder(out, command=command) as run, collected_checks() as checks:
        _, tp = elastix_registration_method(
            fixed_image, moving_image, parameter_object=parameter_object,
            fixed_mask=fixed_mask_image, moving_mask=moving_mask_image,
            log_to_console=log_to_console, output_directory=str(out), log_to_file=True, engine=engine,
            progress=progress, **kwargs)
        if qc_figure:
            qc.write_qc_figure(fixed_image, moving_image, tp, out / "qc.png", output_directory=out)
        written = run.written()
    result = FileRegistration(out, tuple(written), tuple(run.removed), tuple(checks))
    if not log_to_console:  # with the log off the console (progress bars), the transform check's warnings still are
        for message in result.warnings:
            print(f"elastix-bridge: warning: {message}", file=sys.stderr)
    return result


def check_maps_from_headers(fixed: str | os.PathLike, moving: str | os.PathLike, maps_by_file: Sequence[tuple],
                            engine: str = "auto", initial_transform: Optional[str | os.PathLike] = None) -> tuple:
    """Check every map (``[(file, map), ...]``) against the images' headers, before any pixel is read.

    With the engines of ``engine`` and the ``initial_transform`` (``-t0``) where given; the
    registration and ``elastix-bridge plan`` share it (plan refuses what the registration refuses).
    Warnings are left to the request's own check, so that each is logged once.

    Returns:
        The ``(fixed, moving)`` header geometries
        (:class:`~elastix_bridge.core.geometry.ImageGeometry`).

    Raises:
        see :func:`elastix_bridge.validation.validate_maps` and
        :func:`elastix_bridge.core.image_io.read_image_geometry`.
    """
    maps = [m for _, m in maps_by_file]
    geometries = (image_io.read_image_geometry(fixed, "fixed image (-f)"),
                  image_io.read_image_geometry(moving, "moving image (-m)"))
    validate_maps(maps, _engines(maps, engine), geometries=geometries,
                  names=[f"-p {path}" for path, _ in maps_by_file], warn=False,
                  initial_transform={"initial_transform_parameter_file_name": initial_transform}
                  if initial_transform else None)
    return geometries


def _engines(maps, engine: str) -> list:
    """The engine of each map, as the request will choose it (a native IMPACT plugin sends Impact maps to elastix)."""
    return stage_engines(maps, engine, native_plugin=bool(os.environ.get(NATIVE_PLUGIN_ENV, "").strip()))


def _initial_transform_files(t0) -> dict:
    """``-t0`` and the files of its chain (``{"initial transform (-t0)": path, ...}``), checked to be
    TransformParameters files before any work.

    Raises:
        FileNotFoundError: ``-t0`` or a file of its chain is missing.
        ValueError: a file of the chain is not a TransformParameters file (e.g. a parameter file).
    """
    check_input_file(t0, "initial transform (-t0)")
    files = {"initial transform (-t0)": t0}
    for pmap in initial_transform_maps({"initial_transform_parameter_file_name": t0}):
        name = pmap.get("InitialTransformParameterFileName", default="NoInitialTransform")
        if name != "NoInitialTransform":  # earlier files of the chain: inputs too
            named = Path(name) if Path(name).is_absolute() else Path(t0).parent / name
            files[f"initial transform {name} (named by the -t0 chain)"] = named
    return files


def _command_line(fixed, moving, files, out, fixed_mask, moving_mask, t0, engine, threads) -> str:
    """The ``elastix-bridge`` command that runs this registration, for the output folder's lock file."""
    words = ["elastix-bridge", "-f", fixed, "-m", moving, *(w for f in files for w in ("-p", f)), "-out", out]
    for flag, value in (("-fMask", fixed_mask), ("-mMask", moving_mask), ("-t0", t0), ("-threads", threads)):
        if value is not None:
            words += [flag, value]
    return " ".join(map(str, [*words, "--engine", engine]))
