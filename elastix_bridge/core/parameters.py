"""elastix parameter maps: typed per-level lookup and elastix number formatting.

A parameter map is elastix's ``std::map<std::string, std::vector<std::string>>``: every key maps to an
ordered list of *string* values.  This module wraps such a map (:class:`ParameterMap`), reproduces the
lookup rules elastix components use when they read a key (entry 0, then entry ``level``, then the
component-prefixed key; docs/design.md §E1.4), the value conversions and their failures (§E1.3), and the
shortest round-trip number formatting elastix uses when it writes numbers (§E1.5).

Parsing of parameter *files* is delegated to itk-elastix's own parser so that syntax errors are exactly
elastix's (§E1.1).  Nothing here imports torch; ``itk`` is imported only inside the functions that need it.

Sources: ``Common/ParameterFileParser/itkParameterMapInterface.{h,cxx}``,
``Common/ParameterFileParser/itkParameterFileParser.cxx``, ``Core/Install/elxConversion.{h,cxx}``.
"""
from __future__ import annotations

import math
import os
import re
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, KeysView, Mapping, Sequence

import numpy as np

from elastix_bridge.core.interruption import raise_if_swallowed

if TYPE_CHECKING:  # pragma: no cover
    import itk
    import torch  # annotations only: never imported at run time

__all__ = [
    "ParameterError",
    "ParameterMap",
    "UInt",
    "as_parameter_map",
    "format_number",
    "format_numbers",
    "is_number",
    "read_parameter_file",
    "parameter_maps_from_object",
]


def _itk():
    """The ``itk`` module, imported on first use (itk-elastix's ``ParameterObject``)."""
    import itk  # deferred: itk takes seconds to import; importing core never imports itk

    return itk


class ParameterError(ValueError):
    """A parameter is missing, has the wrong number of values, or a value cannot be converted."""


class UInt(int):
    """Marker type for :meth:`ParameterMap.get`: an *unsigned* integer (elastix ``unsigned int``).

    Conversion yields a plain Python ``int``; a leading ``-`` is rejected (docs/design.md §E1.3).
    """


# --------------------------------------------------------------------------------------------------------------
# value conversion (docs/design.md §E1.3, Core/Install/elxConversion.h StringToValue)

_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
_INT_RE = re.compile(r"[+-]?\d+(?:\.0*)?\Z")
_FLOAT_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _type_name(typ) -> str:
    if typ is bool:
        return 'a boolean ("true" or "false", exactly)'
    if typ is UInt:
        return 'an unsigned integer (e.g. "2"; "2.000" is accepted, a leading "-" or a fraction is not)'
    if typ is int:
        return 'an integer (e.g. "-3"; "2.000" is accepted, a fraction is not)'
    if typ is float:
        return 'a floating-point number (e.g. "1.5", "1e-7", "NaN", "Infinity"; no spaces or suffixes)'
    return f"a value of type {getattr(typ, '__name__', typ)}"


def _convert(value: str, typ):
    """Convert one stored string to ``typ``; returns ``(ok, result)``."""
    if typ is str or typ is None:
        return True, value
    if typ is bool:
        if value == "true":
            return True, True
        if value == "false":
            return True, False
        return False, None
    if typ is float:
        if value in _FLOAT_SPECIAL:
            return True, _FLOAT_SPECIAL[value]
        if _FLOAT_RE.match(value):
            return True, float(value)
        return False, None
    if typ is int or typ is UInt:
        if typ is UInt and value.startswith("-"):
            return False, None
        if _INT_RE.match(value):
            return True, int(value.split(".")[0])
        return False, None
    try:  # any other callable (e.g. a user-supplied parser)
        return True, typ(value)
    except (TypeError, ValueError):
        return False, None


# --------------------------------------------------------------------------------------------------------------
# number formatting (docs/design.md §E1.5, itk::NumberToString = double-conversion ECMAScript shortest)


def _js_format(negative: bool, digits: str, n: int) -> str:
    """JavaScript ``Number.prototype.toString`` layout of ``0.digits × 10**n``."""
    k = len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mant = digits[0] + ("." + digits[1:] if k > 1 else "")
        body = f"{mant}e{'+' if e >= 0 else '-'}{abs(e)}"
    return ("-" if negative else "") + body


def format_number(x: float, float32: bool = False) -> str:
    """Format a number exactly like elastix/ITK writes it (``itk::NumberToString``).

    The shortest decimal digit string that round-trips to the same double (or, with ``float32=True``, the
    same IEEE single), laid out like JavaScript's ``Number.prototype.toString``: ``3``, ``32.650000000000006``,
    ``0.000001``, ``1e-7``, ``4.461428806667659e-7``, ``100000000000000000000``, ``1e+21``.  ``-0`` is written
    ``0``; NaN/±inf as ``NaN``/``Infinity``/``-Infinity``.

    Args:
        x: any real number (Python/numpy scalar, or a 0-d tensor via ``float()``).
        float32: format the float32-rounded value with float32 shortest digits (e.g. ``DefaultPixelValue``).

    Returns:
        The formatted string.

    Source: docs/design.md §E1.5; ``Core/Install/elxConversion.cxx`` ``ToString``; ITK ``itkNumberToString.cxx``.
    """
    x = float(x)
    if float32:
        x = float(np.float32(x))  # exact: every float32 is a double
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    text = np.format_float_scientific(np.float32(x), unique=True, trim="-") if float32 else repr(x)
    sign, digit_tuple, exponent = Decimal(text).as_tuple()
    digits = "".join(str(d) for d in digit_tuple)
    stripped = digits.rstrip("0")
    exponent += len(digits) - len(stripped)
    digits = stripped.lstrip("0") or "0"
    n = len(digits) + exponent
    return _js_format(bool(sign), digits, n)


def format_numbers(values: float | Sequence[float] | np.ndarray | torch.Tensor) -> list[str]:
    """:func:`format_number` of every value of an array-like, flattened in C order.

    Args:
        values: a number, a sequence, a numpy array or a torch tensor (any device); ``(D,)`` vectors in
            ITK order, a ``(D, D)`` matrix row by row (transpose first for elastix's column-major
            ``Direction``/``GridDirection``).

    Returns:
        One string per value, as elastix writes it (docs/design.md §E1.5).
    """
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().to("cpu").double().numpy()
    return [format_number(v) for v in np.asarray(values, dtype=np.float64).reshape(-1).tolist()]


def is_number(value: str) -> bool:
    """elastix ``Conversion::IsNumber``: whether a value is written without quotes.

    Optional leading ``-``; must start and end with a digit; all digits, or digits with one ``.``, or
    ``d[.ddd]e[+-]dd``.  ``"true"``, ``"NaN"``, ``"Infinity"``, ``"1e5"`` are *not* numbers.

    Source: ``Core/Install/elxConversion.cxx`` ``IsNumber``; docs/design.md §E1.5.
    """
    s = value[1:] if value.startswith("-") else value
    if not s or not (s[0].isdigit() and s[-1].isdigit()) or not s.isascii():
        return False
    rest = s[1:]
    n_digits = sum(ch.isdigit() for ch in rest)
    if n_digits == len(rest):
        return True
    if "." in rest and n_digits == len(rest) - 1:
        return True
    return re.fullmatch(r"(\.\d+)?e[+-]\d+", rest) is not None


def _to_value_strings(value) -> list[str]:
    """Python value (str, bool, number, or a list/tuple of them) -> list of elastix value strings."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays / tensors
        items = value.tolist()
        if not isinstance(items, list):
            items = [items]
    else:
        items = [value]
    out = []
    for v in items:
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, bool) or type(v).__name__ == "bool_":
            out.append("true" if v else "false")
        elif isinstance(v, int) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"):
            out.append(str(int(v)))
        elif isinstance(v, float) or hasattr(v, "__float__"):
            out.append(format_number(float(v)))
        else:
            raise TypeError(f"cannot store a value of type {type(v).__name__} in a parameter map: {v!r}")
    return out


# --------------------------------------------------------------------------------------------------------------


class ParameterMap:
    """One elastix parameter map: ``key -> list of string values`` with elastix's lookup rules.

    Construct with :meth:`from_dict`, :meth:`from_itk`, or :func:`read_parameter_file`.  Values are stored
    exactly as elastix stores them (strings, no quotes).

    Source: ``Common/ParameterFileParser/itkParameterMapInterface.{h,cxx}``; docs/design.md §E1.3–§E1.4.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Iterable[str]] | None = None) -> None:
        self._data: dict[str, list[str]] = {}
        if data:
            for k, v in data.items():
                self._data[str(k)] = [str(x) for x in v]

    # ---------------------------------------------------------------- constructors / conversion
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParameterMap":
        """Build from a dict whose values are str, numbers, bools, or lists/tuples of them.

        Bools become ``"true"``/``"false"``, ints ``str(int)``, floats :func:`format_number`.

        Raises:
            TypeError: a value of an unsupported type.
        """
        pm = cls()
        for k, v in d.items():
            pm._data[str(k)] = _to_value_strings(v)
        return pm

    @classmethod
    def from_itk(cls, itk_map: Mapping[str, Sequence[str]]) -> "ParameterMap":
        """Build from an itk-elastix ``mapstringvectorstring`` (or any mapping of key -> sequence of str)."""
        if isinstance(itk_map, ParameterMap):
            return itk_map.copy()
        keys = list(itk_map.keys())
        return cls({str(k): [str(v) for v in itk_map[k]] for k in keys})

    def to_itk(self) -> Any:
        """This map as an itk-elastix ``mapstringvectorstring`` (imports ``itk``)."""
        po = _itk().ParameterObject.New()
        po.AddParameterMap(self.to_dict())
        return po.GetParameterMap(0)

    def to_dict(self) -> dict[str, list[str]]:
        """A plain ``dict[str, list[str]]`` copy."""
        return {k: list(v) for k, v in self._data.items()}

    def copy(self) -> "ParameterMap":
        return ParameterMap(self._data)

    # ---------------------------------------------------------------- mapping protocol
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __getitem__(self, name: str) -> list[str]:
        return list(self._data[name])

    def __setitem__(self, name: str, values: Any) -> None:
        self.set(name, values)

    def __delitem__(self, name: str) -> None:
        del self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ParameterMap):
            return self._data == other._data
        return NotImplemented

    def __repr__(self) -> str:
        return f"ParameterMap({self._data!r})"

    def keys(self) -> KeysView[str]:
        return self._data.keys()

    def items(self) -> Iterator[tuple[str, list[str]]]:
        return ((k, list(v)) for k, v in self._data.items())

    def has(self, name: str) -> bool:
        """Whether ``name`` exists with at least one value (a key with zero values counts as absent)."""
        return bool(self._data.get(name))

    def values(self, name: str) -> list[str]:
        """All string values of ``name`` (empty list if absent)."""
        return list(self._data.get(name, ()))

    def set(self, name: str, values: Any) -> None:
        """Set ``name`` to ``values`` (a scalar or a list; converted as in :meth:`from_dict`)."""
        self._data[str(name)] = _to_value_strings(values)

    def remove(self, name: str) -> None:
        """Remove ``name`` if present."""
        self._data.pop(name, None)

    # ---------------------------------------------------------------- typed lookup
    def _convert_entry(self, name: str, index: int, typ):
        value = self._data[name][index]
        ok, result = _convert(value, typ)
        if not ok:
            raise ParameterError(
                f"parameter {name!r}, entry {index}: cannot convert value {value!r}; expected {_type_name(typ)}"
            )
        return result

    def get_entry(self, name: str, index: int, type: type = str, default: Any = None) -> Any:
        """Entry ``index`` of ``name`` converted to ``type``, without any fallback.

        Args:
            name: key.
            index: 0-based entry number.
            type: ``str``, ``bool``, ``int``, :class:`UInt`, ``float`` (docs/design.md §E1.3).
            default: returned when the key or the entry is absent.

        Raises:
            ParameterError: the entry exists but cannot be converted (message names key, entry, value, form).
        """
        vals = self._data.get(name)
        if not vals or index < 0 or index >= len(vals):
            return default
        return self._convert_entry(name, index, type)

    def get(self, name: str, level: int = 0, default: Any = None, type: type = str, prefix: str | None = None) -> Any:
        """elastix's extended ``ReadParameter(value, name, prefix, level, 0)`` lookup.

        Each successful read overwrites the previous one: ``name[0]``, ``name[level]``,
        ``(prefix+name)[0]``, ``(prefix+name)[level]``; nothing found → ``default``.  So
        ``(MaximumNumberOfIterations 5 7)`` with 3 levels gives 5, 7, 5.

        Args:
            name: key, e.g. ``"MaximumNumberOfIterations"``.
            level: resolution level (entry number).
            default: hard-coded default when nothing is found.
            type: ``str``, ``bool``, ``int``, :class:`UInt` or ``float``.
            prefix: component label, e.g. ``"Metric1"``.

        Raises:
            ParameterError: a value that is read cannot be converted.

        Source: ``itkParameterMapInterface.h`` ``ReadParameter``; docs/design.md §E1.4.
        """
        result = default
        for key, index in self.reads(name, level, prefix):
            result = self._convert_entry(key, index, type)  # every read converts, as elastix's does
        return result

    def reads(self, name: str, level: int = 0, prefix: str | None = None) -> list[tuple[str, int]]:
        """The ``(key, entry)`` pairs elastix's ``ReadParameter`` reads for :meth:`get`, in order; the last wins.

        ``name[0]``, ``name[level]``, ``(prefix+name)[0]``, ``(prefix+name)[level]``, each only when
        present. Empty when nothing is found (the default applies).

        Source: ``itkParameterMapInterface.h`` ``ReadParameter``; docs/design.md §E1.4.
        """
        found = []
        for key in [name] + ([prefix + name] if prefix else []):
            vals = self._data.get(key)
            for index in (0, level) if level != 0 else (0,):
                if vals and 0 <= index < len(vals):
                    found.append((key, index))
        return found

    def get_list(self, name: str, count: int | None = None, type: type = str,
                 default: Sequence[Any] | None = None) -> list:
        """All entries of ``name`` converted to ``type``, or exactly the first ``count`` entries.

        Args:
            name: key.
            count: number of entries required (extra entries are ignored, as elastix does).
            type: conversion type (see :meth:`get`).
            default: returned (as a list) when the key is absent.

        Raises:
            ParameterError: fewer than ``count`` values (message names key, expected and given counts), the
                key is absent with ``count`` given and no ``default``, or a conversion failure.
        """
        vals = self._data.get(name) or []
        if not vals:
            if default is not None:
                return list(default)
            if count is None:
                return []
        if count is not None and len(vals) < count:
            raise ParameterError(
                f"parameter {name!r}: expected {count} values, but {len(vals)} "
                f"{'was' if len(vals) == 1 else 'were'} given"
            )
        n = len(vals) if count is None else count
        return [self._convert_entry(name, i, type) for i in range(n)]


# --------------------------------------------------------------------------------------------------------------


def as_parameter_map(value: ParameterMap | Mapping[str, Any] | None) -> ParameterMap:
    """The one conversion of a caller's map to a :class:`ParameterMap`.

    Args:
        value: a :class:`ParameterMap` (returned as is, not copied), a mapping of key -> value(s)
            (values converted as in :meth:`ParameterMap.from_dict`; an itk-elastix
            ``mapstringvectorstring`` too), or None (an empty map).

    Raises:
        TypeError: a value that cannot be stored in a parameter map.
    """
    if isinstance(value, ParameterMap):
        return value
    if value is None:
        return ParameterMap()
    return ParameterMap.from_dict(dict(value))


def parameter_maps_from_object(parameter_object: itk.ParameterObject | ParameterMap | Mapping[str, Any] | Iterable[Any],
                               name: str = "parameter_object") -> list[ParameterMap]:
    """All maps of an itk-elastix ``ParameterObject`` (or any iterable of dict-like maps) as :class:`ParameterMap`.

    Source: ``Core/Main/elxParameterObject.h`` ``GetParameterMap``; docs/design.md §E1.6. An empty
    ``ParameterObject`` gives ``[]`` (the drop-in's unset object); an empty list is refused, as itk-elastix
    refuses it late ("Empty parameter map in parameter object", ``itkElastixRegistrationMethod.hxx``).

    Args:
        parameter_object: the maps.
        name: how messages name the argument (``initial_transform_parameter_object``).

    Raises:
        TypeError: a file name (str, Path: the message shows how to read it), or a value that is no map,
            ``ParameterObject`` or iterable of them.
        ValueError: an empty list (or other iterable) of maps.
    """
    if isinstance(parameter_object, ParameterMap):
        return [parameter_object.copy()]
    if isinstance(parameter_object, Mapping):
        return [ParameterMap.from_dict(parameter_object)]
    if hasattr(parameter_object, "GetNumberOfParameterMaps"):
        n = parameter_object.GetNumberOfParameterMaps()
        return [ParameterMap.from_itk(parameter_object.GetParameterMap(i)) for i in range(n)]
    if isinstance(parameter_object, (str, os.PathLike)):
        file = str(parameter_object)
        raise TypeError(f"{name} {file!r} is a file name, not parameter maps; read it first: "
                        f"po = itk.ParameterObject.New(); po.ReadParameterFile({file!r}); then pass po")
    try:
        items = list(parameter_object)  # a list, a tuple, a generator
    except TypeError:
        raise TypeError(f"{name} is of type {type(parameter_object).__name__}; pass an itk.ParameterObject, a "
                        "parameter map (dict) or a list of them") from None
    if not items:
        raise ValueError(f"{name} is an empty {type(parameter_object).__name__}: no parameter map to run; pass at "
                         "least one map (e.g. itk.ParameterObject.New().GetDefaultParameterMap('rigid')), or None"
                         + (" for itk-elastix's default maps" if name == "parameter_object" else " to leave it out"))
    return [m for item in items for m in parameter_maps_from_object(item, name)]


def _offending_line(text: str, message: str) -> tuple:
    """``(line number or None, elastix's reason)`` from a parse error of elastix's parser.

    elastix quotes the offending line but not its number (``itkParameterFileParser.cxx``
    ``ThrowException``): the number is found by matching the quoted text against the file's lines (for
    a parameter given twice, its second occurrence).
    """
    m = re.search(r'invalid: \n"(.*)"\n(.*?)\nPlease correct', message, re.S)
    if not m:
        d = re.search(r"Description:\s*(.*)", message)
        return None, (d.group(1).strip() if d else message.strip())
    quoted, reason = m.group(1), m.group(2).strip()
    lines = text.split("\n")
    matches = [i + 1 for i, line in enumerate(lines) if line.rstrip("\r") == quoted.rstrip("\r")]
    matches = matches or [i + 1 for i, line in enumerate(lines) if line.strip() and line.strip() == quoted.strip()]
    if "more than once" in reason:
        name = re.search(r'parameter "(.*)" is specified', reason)
        again = [i + 1 for i, line in enumerate(lines)
                 if name and re.match(r"\s*\(\s*" + re.escape(name.group(1)) + r"[\s)]", line)]
        matches = again[1:2] or matches
    return (matches[0] if matches else None), f"{reason} The line: {quoted.strip()!r}."


def read_parameter_file(path: str | Path) -> list[ParameterMap]:
    """Parse an elastix parameter file (``.txt`` or ``.toml``) with itk-elastix's own parser.

    The file must be UTF-8 text (ASCII is); a binary or otherwise encoded file is refused naming the line
    and byte before elastix's parser sees it.

    Args:
        path: file name (str or Path).

    Returns:
        The maps in the file (one map for an elastix parameter file).

    Raises:
        FileNotFoundError: the file does not exist.
        ParameterError: the file is not UTF-8 text, or elastix's parser rejected it; the message names the
            file, the line number and elastix's reason.

    Source: ``Common/ParameterFileParser/itkParameterFileParser.cxx``; docs/design.md §E1.1.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"parameter file not found: {p}")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
        bad = text.find("\x00")
        if bad >= 0:
            raise UnicodeDecodeError("utf-8", data, len(text[:bad].encode()), len(text[:bad].encode()) + 1,
                                     "NUL byte")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ParameterError(
            f"cannot parse parameter file {p}, line {line}: byte 0x{data[exc.start]:02x} at offset {exc.start} is not "
            f"UTF-8 text (a binary file, or another encoding?); a parameter file is plain text of (Name value ...) "
            f"lines: save it as UTF-8") from None
    po = _itk().ParameterObject.New()
    raise_if_swallowed()  # ITK's lazy loading (seconds, just done) loses a Ctrl-C / SIGTERM raised inside it
    try:
        po.ReadParameterFile(str(p))
    except RuntimeError as exc:  # elastix's parser raises itk::ExceptionObject
        line, reason = _offending_line(text, str(exc))
        where = f"{p}, line {line}" if line else str(p)
        raise ParameterError(f"cannot parse parameter file {where}: {reason}") from exc
    return parameter_maps_from_object(po)
