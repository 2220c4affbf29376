"""The one door to itk-elastix's own registration, used by both the API and the drop-in.

:mod:`elastix_bridge.api` runs elastix stages through :func:`run_itk_elastix`, and
:mod:`elastix_bridge.dropin` hands Impact maps to the API; neither imports the other's internals,
so there is no import cycle. Whether the drop-in is installed or not, :func:`run_itk_elastix`
reaches itk-elastix's own ``ElastixRegistrationMethod`` filter, never the bridge's replacement.

Nothing here is imported at ``import elastix_bridge`` time that would import ``itk``: every
function imports it when called.

itk-elastix's functional ``itk.elastix_registration_method`` does the same as
:func:`run_itk_elastix`: it creates the filter with ``New(*args, **kwargs)`` and updates it.

:func:`run_itk_elastix_in_child` runs that call in a forked child process. ITK's Python wrapping
holds the GIL during ``Update()`` (measured: a Python thread does not run during a registration),
so in-process no Python signal handler runs until elastix returns, and elastix has no abort that
its optimisers check (``itk::ProcessObject::AbortGenerateDataOn`` is read only by filters that call
``UpdateProgress``). The parent waits in short polls, so Ctrl-C / SIGTERM act at once: the child is
killed and the exception propagates.
"""
from __future__ import annotations

import contextlib
import ctypes
import difflib
import os
import pickle
import re
import select
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import numpy as np

from elastix_bridge.core.parameters import parameter_maps_from_object
from elastix_bridge.core.transform_io import to_parameter_object

if TYPE_CHECKING:  # pragma: no cover
    import itk


def itk_attribute(name: str) -> Any:
    """itk's own attribute ``name``, bypassing the drop-in's replacement if it is installed.

    The drop-in gives the ``itk`` module a subclass of itk's module type that names the type it
    extends as ``itk_module_type`` (:mod:`elastix_bridge.dropin`); the attribute is read through
    that type.
    """
    import itk  # deferred: itk takes seconds to import

    module_type = type(itk)
    base = getattr(module_type, "itk_module_type", module_type)
    return base.__getattribute__(itk, name)


def run_itk_elastix(*args: Any, **kwargs: Any) -> tuple[itk.Image, itk.ParameterObject]:
    """itk-elastix's registration on its own filter: ``(result_image, transform_parameter_object)``.

    Args:
        *args, **kwargs: exactly those of ``itk.elastix_registration_method`` (fixed and moving
            ``itk.Image``, then keywords such as ``parameter_object``, ``fixed_mask``,
            ``output_directory``, ``log_to_console``, ``number_of_threads``).

    Raises:
        RuntimeError: whatever elastix raises (an ``itk::ExceptionObject``), unchanged.
    """
    method = itk_attribute("ElastixRegistrationMethod").New(*args, **kwargs)
    method.UpdateLargestPossibleRegion()
    return method.GetOutput(), method.GetTransformParameterObject()


class ElastixStageError(RuntimeError):
    """An elastix run failed; the message names the run and the cause found in elastix's log."""


def run_itk_elastix_in_child(fixed_image: itk.Image, moving_image: itk.Image, what: str, log_folder: str | Path,
                             with_result: bool = False, on_poll: Optional[Callable[[], None]] = None,
                             full_log: Optional[str | Path] = None,
                             **kwargs: Any) -> tuple[Optional[itk.Image], itk.ParameterObject]:
    """:func:`run_itk_elastix` in a forked child process: interruptible, and its failure names the cause.

    The child writes into ``log_folder`` (``output_directory``, with ``log_to_file``); the parent polls
    the child every 0.1 s, so a KeyboardInterrupt (or any exception a signal handler raises) is
    acted on within that time: the child is killed (SIGKILL: elastix cannot be stopped otherwise)
    and the exception propagates; files the child wrote stay for the caller to remove.

    Args:
        fixed_image, moving_image: as for :func:`run_itk_elastix`.
        what: how the run is named in errors (``"stage 1 (elastix, parameter map 1)"``).
        log_folder: existing folder elastix writes its outputs and ``elastix.log`` into
            (``kwargs`` may name another ``log_file_name``).
        with_result: return elastix's result image (else None: elastix is asked for none, or it is not needed).
        on_poll: called at every poll (e.g. to redraw an elapsed-time bar).
        full_log: where the user finds elastix's whole log, named at the end of an error.
        **kwargs: the other itk-elastix keywords.

    Returns:
        ``(result_image or None, transform_parameter_object)``.

    Raises:
        ElastixStageError: elastix failed (the message quotes elastix's error lines from the log, or
            itk-elastix's own text when the log has none) or its process died (e.g. killed for memory).
    """
    kwargs = dict(kwargs, output_directory=str(log_folder), log_to_file=True)
    log_path = Path(log_folder) / kwargs.get("log_file_name", "elastix.log")
    # os.fork, not multiprocessing: the images and ITK are inherited, not pickled, and a daemonic
    # process (a dask worker) may fork although multiprocessing forbids it children.
    _settle_random_state()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_end)
        _child_run(write_end, fixed_image, moving_image, with_result, kwargs)
    os.close(write_end)
    try:
        data = _read_until_closed(read_end, on_poll)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # the registration cannot be stopped another way
        raise
    finally:
        os.close(read_end)
        status = os.waitpid(pid, 0)[1]
    message = pickle.loads(data) if data else None
    if message is None:
        code = os.waitstatus_to_exitcode(status)
        died = f"was killed by signal {-code}" if code < 0 else f"ended with exit code {code}"
        raise ElastixStageError(f"{what} failed: elastix's process {died} without a result (a kill for memory?); "
                                f"{elastix_log_cause(log_path) or 'its log says nothing more'}")
    if message[0] == "error":
        cause = elastix_log_cause(log_path) or message[2]
        if "use LogToConsoleOn() or LogToFileOn()" not in message[2]:
            cause = message[2]  # not elastix's generic pointer to its log: itk-elastix's own words
        raise ElastixStageError(f"{what} failed in elastix: {cause}; fix that in the parameter map or the images"
                                + ("" if full_log is None else f" (elastix's whole log: {full_log})"))
    _, image, maps = message
    import itk  # deferred: itk takes seconds to import

    tp = itk_attribute("ParameterObject").New()
    for pmap in maps:
        tp.AddParameterMap(pmap)
    return (itk.image_from_dict(image) if image is not None else None), tp


def _read_until_closed(fd: int, on_poll=None) -> bytes:
    """Everything the child writes to ``fd`` until it closes it; waits in 0.1 s polls so signals are handled."""
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if on_poll is not None:
            on_poll()
        if ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _child_run(write_end: int, fixed_image, moving_image, with_result, kwargs) -> None:
    """In the forked child: run elastix, write the pickled ``("ok", image dict or None, [maps])`` or
    ``("error", type, text)`` to ``write_end``, and end with ``os._exit`` (no parent's clean-up runs here)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the whole group; the parent acts
        for number in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        with contextlib.suppress(Exception):  # Linux: die with the parent, never write into a folder it released
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        try:
            image, tp = run_itk_elastix(fixed_image, moving_image, **kwargs)
            import itk  # deferred: itk takes seconds to import

            maps = [{key: list(value) for key, value in tp.GetParameterMap(i).items()}
                    for i in range(tp.GetNumberOfParameterMaps())]
            message = ("ok", itk.dict_from_image(image) if with_result else None, maps)
        except BaseException as error:  # noqa: BLE001 - every failure goes to the parent, as text
            message = ("error", type(error).__name__, str(error).strip() or type(error).__name__)
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(pickle.dumps(message))
        code = 0
    finally:
        os._exit(code)


def _settle_random_state() -> None:
    """Give the next elastix registration of this process the random draws of a fresh process.

    Measured here: after some earlier work in the process (a chain of elastix and bridge stages
    through the command), elastix's next registration draws other samples (a Random-sampler run's
    first IterationInfo rows differ), and a finished in-process elastix registration restores the
    draws of a fresh process. A registration in a forked child never hands that back, so the parent
    runs one iteration on a 16 x 16 image first (~7 ms). A pair in a batch worker then registers as
    in a fresh process, whatever ran there before; tests/test_engine_fidelity.py compares elastix's
    draws with the bridge engine's digit by digit.
    """
    import itk  # deferred: itk takes seconds to import

    image = itk.image_from_array(np.random.default_rng(0).random((16, 16)).astype(np.float32))
    parameter_object = itk_attribute("ParameterObject").New()
    pmap = parameter_object.GetDefaultParameterMap("translation", 1)
    pmap["MaximumNumberOfIterations"] = ["1"]
    parameter_object.AddParameterMap(pmap)
    run_itk_elastix(image, image, parameter_object=parameter_object)


def elastix_log_cause(log_path: str | Path, limit: int = 600) -> str:
    """elastix's error lines in its log, joined on one line ("" when none or no log).

    elastix reports a failure as an ``itk::ExceptionObject`` (``Description: ITK ERROR: Class(0x..): text``,
    written by ``elx::ElastixMain`` / ``xoutmain``) or in lines with ``ERROR``; the description is
    kept as ``Class: text`` (without the object's address), the generic "see the log" lines are dropped.
    """
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    found = [line.split("Description:", 1)[1] for line in lines if "Description:" in line]
    if not found:
        found = [line for line in lines if re.search(r"\bERROR\b|[Ee]rror:", line)]
    causes = []
    for line in found:
        text = re.sub(r"(itk::|ITK )ERROR:\s*(\w+)\(0x[0-9a-fA-F]+\):\s*", r"\2: ", line).strip(" :")
        if text and "LogToConsoleOn" not in text and text not in causes:
            causes.append(text)
    cause = "; ".join(causes)
    return cause if len(cause) <= limit else cause[:limit - 3] + "..."


def given_keywords(**keywords: Any) -> dict:
    """The keywords whose value is not None (itk-elastix keywords are set only when given)."""
    return {key: value for key, value in keywords.items() if value is not None}


def as_parameter_object(value: itk.ParameterObject | Mapping[str, Any] | Sequence[Any] | None
                        ) -> itk.ParameterObject | None:
    """An ``itk.ParameterObject`` from a ParameterObject, a dict or a list of dicts (as itk-elastix accepts).

    None and ParameterObjects are returned unchanged.

    Raises:
        TypeError: a map value that cannot be stored in a parameter map.
    """
    if value is None or hasattr(value, "GetNumberOfParameterMaps"):
        return value
    return to_parameter_object(parameter_maps_from_object(value))


def as_float_image(image: itk.Image) -> itk.Image:
    """``image`` with float pixels, elastix's internal pixel type (unchanged if already float).

    Raises:
        itk's error for pixel types ``itk.cast_image_filter`` cannot cast (vector, RGB).
    """
    import itk  # deferred: itk takes seconds to import

    dim = image.GetImageDimension()
    if itk.template(image)[1][0] is itk.F:
        return image
    return itk.cast_image_filter(image, ttype=(type(image), itk.Image[itk.F, dim]))


def itk_elastix_keywords() -> frozenset:
    """The keywords ``itk.elastix_registration_method`` takes, snake_case: one per ``Set<Name>`` method of
    ``ElastixRegistrationMethod`` (ITK's ``itk/support/extras.py`` ``set_inputs`` calls
    ``"Set" + snake_to_camel_case(keyword)`` and fails with AttributeError when there is none)."""
    from itk.support.helpers import camel_to_snake_case  # deferred: itk takes seconds to import

    method = next(iter(itk_attribute("ElastixRegistrationMethod").values()))  # any one image type
    setters = {camel_to_snake_case(name[3:]) for name in dir(method) if name.startswith("Set") and name != "Set"}
    return frozenset(setters | {"auto_progress", "template_parameters"})  # the two set_inputs takes itself


def check_keywords(keywords: Mapping[str, Any], own: Sequence[str] = ()) -> None:
    """Every keyword is one itk-elastix takes (or one of ``own``, the caller's further arguments): a typo
    (``fixed_maks``) is named as unknown, with the nearest known keyword, before any work.

    Raises:
        TypeError: naming the unknown keyword and what it was likely meant to be (as Python's own
            "unexpected keyword argument").
    """
    from itk.support.helpers import camel_to_snake_case  # deferred: itk takes seconds to import

    known = itk_elastix_keywords() | set(own)
    for key in keywords:
        if key in known or camel_to_snake_case(key) in known:  # itk also takes CamelCase (FixedMask)
            continue
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = (f"did you mean {close[0]!r}? Fix its spelling" if close else
                f"it is none of itk-elastix's keywords ({', '.join(sorted(known - set(own)))})"
                + (f" nor {', '.join(own)}" if own else "") + "; remove it")
        raise TypeError(f"elastix_registration_method() got an unknown keyword argument {key!r}: {hint}")
