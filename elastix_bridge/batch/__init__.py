"""Cohorts: many pairs, one summary, on Dask (a LocalCluster by default, any Dask cluster when asked).

    from elastix_bridge.batch import register_many
    records = register_many("pairs.csv", ["affine.txt", "impact_mind_static_3d.txt"], "out")

The command is ``elastix-bridge batch MANIFEST -p MAP [-p MAP ...] -out DIR``. Needs
``dask.distributed`` (``pip install "elastix-bridge[batch]"``).
"""
from elastix_bridge.batch.manifest import ManifestError, Pair, read_manifest
from elastix_bridge.batch.runner import register_many

__all__ = ["ManifestError", "Pair", "read_manifest", "register_many"]
