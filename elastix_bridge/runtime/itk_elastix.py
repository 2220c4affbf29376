"""The one door to itk-elastix's own registration, used by both the API and the drop-in.

:mod:`elastix_bridge.api` runs elastix stages through :func:`run_itk_elastix`, and
:mod:`elastix_bridge.dropin` hands Impact maps to the API; neither imports the other's internals,
so there is no import cycle. Whether the drop-in is installed or not, :func:`run_itk_elastix`
reaches itk-elastix's own ``ElastixRegistrationMethod`` filter, never the bridge's replacement.

Nothing here is imported at ``import elastix_bridge`` time that would import ``itk``: every
function imports it when called.

itk-elastix's functional ``itk.elastix_registration_method`` does the same as
:func:`run_itk_elastix`: it creates the filter with ``New(*args, **kwargs)`` and updates it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import itk


def itk_attribute(name: str) -> Any:
    """itk's own attribute ``name``, bypassing the drop-in's replacement if it is installed.

    The drop-in gives the ``itk`` module a subclass of itk's module type that names the type it
    extends as ``itk_module_type`` (:mod:`elastix_bridge.dropin`); the attribute is read through
    that type.
    """
    import itk

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
    from elastix_bridge.core.parameters import parameter_maps_from_object
    from elastix_bridge.core.transform_io import to_parameter_object

    return to_parameter_object(parameter_maps_from_object(value))


def as_float_image(image: itk.Image) -> itk.Image:
    """``image`` with float pixels, elastix's internal pixel type (unchanged if already float).

    Raises:
        itk's error for pixel types ``itk.cast_image_filter`` cannot cast (vector, RGB).
    """
    import itk

    dim = image.GetImageDimension()
    if itk.template(image)[1][0] is itk.F:
        return image
    return itk.cast_image_filter(image, ttype=(type(image), itk.Image[itk.F, dim]))
