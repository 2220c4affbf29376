"""Drop-in Impact support for itk-elastix scripts.

After ``import elastix_bridge``, both itk-elastix call styles handle ``(Metric "Impact")`` maps:

* ``itk.elastix_registration_method(fixed, moving, parameter_object=..., ...)``;
* the object pattern ``itk.ElastixRegistrationMethod.New(...)`` (or ``[ImageType, ImageType].New()``)
  with its setters, ``Update()``, ``GetOutput()`` and ``GetTransformParameterObject()``.

A registration whose parameter object has no Impact map runs on itk-elastix's own filter, unchanged.
One with an Impact map runs through :func:`elastix_bridge.api.elastix_registration_method`
(``engine="auto"``: Impact stages on the bridge engine, the others on elastix).
:func:`uninstall` restores plain itk-elastix; :func:`install` puts the bridge back.

How: itk is a lazily loading module whose loader rewrites its attributes when the Elastix module is
first used, so assigning replacements would be undone. Instead the ``itk`` module object gets a
subclass of its own module type (``LazyITKModule``) that answers the two names with the bridge's
versions. :func:`install` does not import itk: when itk is not imported yet, an import hook applies
the change right after ``import itk``, so ``import elastix_bridge`` stays cheap.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from elastix_bridge.api import elastix_registration_method
from elastix_bridge.core.parameters import parameter_maps_from_object
from elastix_bridge.core.engines import uses_impact
from elastix_bridge.runtime.itk_elastix import as_parameter_object, itk_attribute
from elastix_bridge.validation import (check_component_names, check_equal_dimensions, check_image_argument,
                                       check_mask_dimension, check_threads)

if TYPE_CHECKING:  # pragma: no cover
    from importlib.machinery import ModuleSpec
    from types import ModuleType

    import itk

log = logging.getLogger("elastix_bridge")

_original_module_class = None


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Applies the drop-in to ``itk`` right after its first import."""

    def find_spec(self, name: str, path: Optional[Sequence[str]],
                  target: Optional[ModuleType] = None) -> Optional[ModuleSpec]:
        if name != "itk":
            return None
        sys.meta_path.remove(self)  # find itk with the other finders, once
        spec = importlib.util.find_spec("itk")
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            _patch(sys.modules["itk"])  # itk replaces its sys.modules entry by its lazy module

        spec.loader.exec_module = exec_module
        return spec


_hook = _PatchAfterImport()


def installed() -> bool:
    """Whether ``itk``'s registration names point at the bridge (or will, once itk is imported)."""
    return _original_module_class is not None or _hook in sys.meta_path


def install() -> None:
    """Make ``itk.elastix_registration_method`` and ``itk.ElastixRegistrationMethod`` handle Impact maps.

    Idempotent. Called by ``import elastix_bridge``; imports nothing itself.
    """
    if installed():
        return
    if "itk" in sys.modules:
        _patch(sys.modules["itk"])
    else:
        sys.meta_path.insert(0, _hook)


def _patch(itk) -> None:
    global _original_module_class
    if _original_module_class is not None:
        return
    original = type(itk)

    class BridgedITKModule(original):  # in a function: it subclasses the module type of the itk it is given
        """itk's module type, answering the registration names with the bridge's versions."""

        itk_module_type = original  # how itk_elastix.itk_attribute reaches itk's own names

        def __getattribute__(self, attr: str) -> Any:
            if attr == "elastix_registration_method":
                return bridged_elastix_registration_method
            if attr == "ElastixRegistrationMethod":
                return RegistrationMethodTemplate(original.__getattribute__(self, attr))
            return original.__getattribute__(self, attr)

    itk.__class__ = BridgedITKModule
    _original_module_class = original


def uninstall() -> None:
    """Restore plain itk-elastix (``itk.elastix_registration_method`` runs elastix only). Idempotent."""
    global _original_module_class
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)
    if _original_module_class is not None:
        sys.modules["itk"].__class__ = _original_module_class
        _original_module_class = None


def bridged_elastix_registration_method(*args: Any, **kwargs: Any) -> tuple[itk.Image, itk.ParameterObject]:
    """What ``itk.elastix_registration_method`` answers once the drop-in is installed.

    A thin alias, not a second implementation: itk-elastix's functional form over
    :class:`BridgedRegistrationMethod` (``New(*args, **kwargs)``, ``Update()``), so that a parameter
    object without Impact maps runs on itk-elastix's own filter exactly as before, and one with an
    Impact map runs through :func:`elastix_bridge.elastix_registration_method` (the one public
    implementation, which adds ``engine=`` and ``progress=``).

    Returns:
        ``(result_image, transform_parameter_object)``.

    Raises:
        TypeError: an image or mask is not an ``itk.Image`` (a path, a numpy array), with what to pass
            instead.
        elastix_bridge.validation.InputImageError: fixed and moving images, or a mask and its image, of
            different dimensions (before itk's filter is made).
        ValueError: ``number_of_threads`` below 1.
    """
    images = dict(zip(("fixed_image", "moving_image"), args[:2]))
    images.update({k: kwargs[k] for k in ("fixed_image", "moving_image", "fixed_mask", "moving_mask") if k in kwargs})
    for what, value in images.items():
        check_image_argument(value, what)
    if "fixed_image" in images:  # itk's New would raise SWIG's type error for a mask of another dimension
        for which in ("fixed", "moving"):
            check_mask_dimension(images.get(f"{which}_mask"), images["fixed_image"].GetImageDimension(), which)
    if kwargs.get("number_of_threads") != 0:  # 0 is itk-elastix's "all threads"
        check_threads(kwargs.get("number_of_threads"))
    method = RegistrationMethodTemplate(itk_attribute("ElastixRegistrationMethod")).New(*args, **kwargs)
    method.UpdateLargestPossibleRegion()
    return method.GetOutput(), method.GetTransformParameterObject()


class RegistrationMethodTemplate:
    """Stands in for the ``itk.ElastixRegistrationMethod`` template: indexing and ``New`` as itk's."""

    def __init__(self, template: Any) -> None:
        self._template = template

    def __getitem__(self, key: Any) -> RegistrationMethodTemplate:
        return RegistrationMethodTemplate(self._template[key])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._template, name)

    def New(self, *args: Any, **kwargs: Any) -> BridgedRegistrationMethod:
        """Create the filter; keywords are applied through the setters, as in itk.

        Raises:
            elastix_bridge.validation.InputImageError: fixed and moving images of different dimensions
                (itk's filter, typed by the fixed image, would read the moving image back as garbage).
        """
        images = dict(zip(("fixed_image", "moving_image"), args[:2]))
        images.update({k: kwargs[k] for k in ("fixed_image", "moving_image") if k in kwargs})
        if all(hasattr(images.get(k), "GetImageDimension") for k in ("fixed_image", "moving_image")):
            check_equal_dimensions(images["fixed_image"].GetImageDimension(), images["moving_image"].GetImageDimension())
        own = {k: kwargs.pop(k) for k in ("parameter_object", "initial_transform_parameter_object") if k in kwargs}
        method = BridgedRegistrationMethod(self._template.New(*args, **kwargs))
        if "parameter_object" in own:
            method.SetParameterObject(own["parameter_object"])
        if "initial_transform_parameter_object" in own:
            method.SetInitialTransformParameterObject(own["initial_transform_parameter_object"])
        return method


class BridgedRegistrationMethod:
    """An ``itk.ElastixRegistrationMethod`` that runs Impact parameter objects through the bridge.

    Every method not defined here is itk-elastix's own (setters, getters, masks, observers).
    ``Update()`` runs itk-elastix's filter when no map uses Impact; otherwise
    :func:`elastix_bridge.api.elastix_registration_method` with the filter's inputs and settings.
    """

    def __init__(self, method: Any) -> None:
        self._method = method
        self._initial_object = None
        self._result = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._method, name)

    def SetParameterObject(self,
                           parameter_object: itk.ParameterObject | Mapping[str, Any] | Sequence[Any] | None) -> None:
        self._result = None
        self._method.SetParameterObject(as_parameter_object(parameter_object))

    def SetInitialTransformParameterObject(
            self, parameter_object: itk.ParameterObject | Mapping[str, Any] | Sequence[Any] | None) -> None:
        self._result = None
        self._initial_object = as_parameter_object(parameter_object)
        self._method.SetInitialTransformParameterObject(self._initial_object)

    def _maps(self) -> list:
        po = self._method.GetParameterObject()
        return [] if po is None else parameter_maps_from_object(po)

    def Update(self) -> None:
        maps = self._maps()
        if not any(uses_impact(pmap) for pmap in maps):
            check_component_names(maps)  # a misspelt "Impact" would otherwise be elastix's "Internal error"
            self._result = None
            return self._method.Update()
        m = self._method
        kwargs = {}
        if m.GetInitialTransformParameterFileName():
            kwargs["initial_transform_parameter_file_name"] = m.GetInitialTransformParameterFileName()
        if self._initial_object is not None:
            kwargs["initial_transform_parameter_object"] = self._initial_object
        if m.GetNumberOfThreads() != 0:  # 0: itk-elastix's default (all threads); a negative count is refused
            kwargs["number_of_threads"] = m.GetNumberOfThreads()
        # Settings the bridge cannot honour are passed on, so that they are refused by name, not ignored.
        for name in ("fixed_point_set_file_name", "moving_point_set_file_name", "initial_transform",
                     "external_initial_transform"):
            value = getattr(m, "Get" + name.title().replace("_", ""))()
            if value:
                kwargs[name] = value
        out = m.GetOutputDirectory() or None
        self._result = elastix_registration_method(m.GetFixedImage(), m.GetMovingImage(), parameter_object=m.GetParameterObject(),
                               fixed_mask=m.GetFixedMask(), moving_mask=m.GetMovingMask(),
                               log_to_console=bool(m.GetLogToConsole()), output_directory=out,
                               log_to_file=bool(m.GetLogToFile()) and out is not None,
                               log_file_name=m.GetLogFileName() or "elastix.log", **kwargs)

    UpdateLargestPossibleRegion = Update

    def GetOutput(self) -> itk.Image:
        return self._method.GetOutput() if self._result is None else self._result[0]

    def GetTransformParameterObject(self) -> itk.ParameterObject:
        return self._method.GetTransformParameterObject() if self._result is None else self._result[1]
