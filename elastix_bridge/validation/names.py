"""How the checks name a map, a key and what the user probably meant (shared by every check here)."""
from __future__ import annotations

import difflib
import re


# Component-label prefixes elastix puts before a key (``ReadParameter(..., prefix, ...)``).
_LABEL = re.compile(r"(Metric|Optimizer|Transform|Interpolator|ImageSampler|ResampleInterpolator|Resampler|"
                    r"FixedImagePyramid|MovingImagePyramid|Registration)\d+(?=[A-Z])")


def _unlabelled(key: str) -> str:
    """``key`` without a leading component label: ``Optimizer0MaximumNumberOfIterations`` → the plain name."""
    m = _LABEL.match(key)
    return key[m.end():] if m else key


def _where(k: int, names) -> str:
    return f"parameter map {k}" + (f" ({names[k]})" if names and k < len(names) and names[k] else "")


def _did_you_mean(name: str, candidates) -> str:
    """`` Did you mean 'X' or 'Y'?`` for the close matches of ``name`` (or a case-insensitive match), or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _in_map(error: Exception, where: str) -> Exception:
    """``error`` again, of the same type, with the map named in front of its message."""
    return type(error)(f"{where}: {error}")
