"""The built-in feature models: names a parameter map may write instead of a model file.

``(ImpactModelsPath0 "mind-ssc-3d")`` names a MIND-SSC descriptor (Heinrich et al., MedIA 2012;
MICCAI 2013 §2; docs/design.md §2.6) that the bridge writes as a TorchScript file on first use
(:func:`elastix_bridge.runtime.mind.mind_model_path`). This module holds only what the parameter
reader (:mod:`elastix_bridge.core.impact_parameters`) and the planner need without torch: the names,
each model's dimension, and the neighbour pairs that give its channel count.
"""

__all__ = ["RESERVED_MODELS", "mind_pairs"]

#: Reserved model names usable in ``Impact[Fixed|Moving]ModelsPath<L>``: name -> (dimension,
#: description). Both use ``radius=1, dilation=2`` and return one layer (``ImpactLayersMask "1"``).
RESERVED_MODELS: dict = {
    "mind-ssc-2d": (
        2,
        "MIND-SSC, 2D, radius 1, dilation 2: 4 channels (pairs of the 4-neighbourhood); "
        "ImpactDimension 2, ImpactNumberOfChannels 1, ImpactLayersMask \"1\"",
    ),
    "mind-ssc-3d": (
        3,
        "MIND-SSC, 3D, radius 1, dilation 2: 12 channels (pairs of the 6-neighbourhood); "
        "ImpactDimension 3, ImpactNumberOfChannels 1, ImpactLayersMask \"1\"",
    ),
}


def mind_pairs(dimension: int) -> list:
    """The neighbour pairs of MIND-SSC as unit offsets in tensor axis order.

    Args:
        dimension: 2 or 3.

    Returns:
        A list of ``(offset_a, offset_b)`` tuples, each offset a tuple of ``dimension`` ints in
        ``{-1, 0, 1}`` (tensor order ``(z, y, x)`` / ``(y, x)``); the two offsets of a pair lie on
        different axes, i.e. at squared distance 2. 3D: 12 pairs, 2D: 4 pairs (MICCAI 2013 §2).

    Raises:
        ValueError: dimension not 2 or 3.
    """
    if dimension not in (2, 3):
        raise ValueError(f"MIND-SSC dimension must be 2 or 3, got {dimension!r}")
    neighbours = []
    for axis in range(dimension):
        for sign in (-1, 1):
            off = [0] * dimension
            off[axis] = sign
            neighbours.append(tuple(off))
    pairs = []
    for i, a in enumerate(neighbours):
        for b in neighbours[i + 1:]:
            if sum((p - q) ** 2 for p, q in zip(a, b)) == 2:
                pairs.append((a, b))
    return pairs
