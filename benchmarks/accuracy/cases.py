"""The suite's cases: synthetic MNI pairs with a known transform (``make_pair``) and, when present,
the real 2D brain pair of ``../shared/data/elastix-2d-brain`` (no ground truth).

Each case has a name, a dimension and the keyword arguments of
:func:`elastix_bridge.demo_data.make_pair` (seed included). Cases are generated once into
``<out>/cases/<name>/`` and reused while their settings (``settings.json``) are unchanged.

Edit :data:`CASES` to change the suite; :data:`QUICK` names the ``--quick`` subset.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from elastix_bridge import demo_data

#: Bump when make_pair's output for the same settings changes (regenerates every case).
GENERATOR_VERSION = "2"

#: Repository root (this file is benchmarks/accuracy/cases.py).
ROOT = Path(__file__).resolve().parents[2]
#: The real 2D multimodal brain pair (fixed.mhd, moving.mhd, mask_fixed.mhd, mask_moving.mhd).
REAL_2D = ROOT.parent / "shared" / "data" / "elastix-2d-brain"


@dataclass(frozen=True)
class Case:
    """One registration problem.

    Attributes:
        name: folder / table name.
        dimension: 2 or 3.
        settings: keyword arguments of ``make_pair`` (without ``output_dir``/``dimension``);
            None for the real pair.
        real_dir: folder of a real pair (fixed.mhd, moving.mhd, mask_fixed.mhd, mask_moving.mhd).
        note: one line for the table.
    """

    name: str
    dimension: int
    settings: dict = field(default_factory=dict)
    real_dir: Path | None = None
    note: str = ""

    @property
    def has_truth(self) -> bool:
        """True for synthetic cases (true displacement and tissue labels exist)."""
        return self.real_dir is None

    def key(self) -> str:
        """Hash of everything that defines the case's files (resume check)."""
        text = json.dumps({"dim": self.dimension, "settings": self.settings,
                           "real": str(self.real_dir), "gen": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def paths(self, out: Path) -> dict:
        """Paths of the case's files (``fixed``, ``moving``, ``fixed_mask``, ``moving_mask`` and
        for synthetic cases ``true_displacement``, ``fixed_labels``, ``moving_labels``)."""
        if self.real_dir is not None:
            r = self.real_dir
            return dict(fixed=r / "fixed.mhd", moving=r / "moving.mhd",
                        fixed_mask=r / "mask_fixed.mhd", moving_mask=r / "mask_moving.mhd")
        folder = out / "cases" / self.name
        names = ("fixed", "moving", "fixed_mask", "moving_mask", "true_displacement",
                 "fixed_labels", "moving_labels")
        return {n: folder / f"{n}.nii.gz" for n in names}

    def generate(self, out: Path) -> dict:
        """Create the case's files under ``out/cases/<name>`` unless they exist with the same key."""
        paths = self.paths(out)
        if self.real_dir is not None:
            return paths
        folder = out / "cases" / self.name
        stamp = folder / "settings.json"
        if stamp.is_file() and json.loads(stamp.read_text()).get("key") == self.key() and \
                all(p.is_file() for p in paths.values()):
            return paths
        info = demo_data.make_pair(folder, dimension=self.dimension, **self.settings)
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in info.items()}
        stamp.write_text(json.dumps({"key": self.key(), "settings": self.settings, "info": meta},
                                    indent=1))
        return paths


def _c(name, dim, note="", **settings) -> Case:
    return Case(name, dim, settings, note=note)


#: 3D cases: contrast × misalignment × deformation × bias/noise, 2 mm unless named ``_1mm``
#: (10 at 2 mm, 2 at 1 mm: the list is sized so that the full suite fits ~45 min on 2 cores).
CASES_3D = [
    _c("t2_small", 3, "demo-like: T2, 1–2°, ±2 mm, 4–6 mm field", seed=0),
    _c("t2_affine", 3, "T2, 3–5°, ±8 mm, ±5 % scale", seed=11, contrast="t2",
       rotation_deg=(3.0, 5.0), translation_mm=8.0, scale=0.05),
    _c("t2_large", 3, "T2, 7–8 mm field", seed=12, contrast="t2", deformation_mm=(7.0, 8.0)),
    _c("pd_mild", 3, "PD, 2–3 mm field, low noise", seed=13, contrast="pd",
       deformation_mm=(2.0, 3.0), noise=0.005),
    _c("flair_mid", 3, "FLAIR, 4–6 mm field, bias 0.3", seed=15, contrast="flair", bias=0.3),
    _c("flair_affine", 3, "FLAIR, 3–5°, ±8 mm, ±5 %, 5–7 mm", seed=16, contrast="flair",
       rotation_deg=(3.0, 5.0), translation_mm=8.0, scale=0.05, deformation_mm=(5.0, 7.0)),
    _c("inverted_noisy", 3, "inverted T1, noise 3 %, bias 0.3", seed=18, contrast="inverted",
       noise=0.03, bias=0.3, deformation_mm=(3.0, 5.0)),
    _c("nonmono_mid", 3, "GM-brightest, 4–6 mm field", seed=19, contrast="nonmonotonic"),
    _c("nonmono_large", 3, "GM-brightest, 2–4°, ±5 mm, 6–8 mm", seed=20,
       contrast="nonmonotonic", rotation_deg=(2.0, 4.0), translation_mm=5.0,
       deformation_mm=(6.0, 8.0)),
    _c("t1_mono", 3, "same contrast (sanity), 4–6 mm field", seed=21, contrast="t1"),
    _c("t2_1mm", 3, "T2 at 1 mm, 4–6 mm field", seed=22, voxel_size=1.0),
    _c("flair_1mm", 3, "FLAIR at 1 mm, 2–4°, ±4 mm", seed=23, voxel_size=1.0, contrast="flair",
       rotation_deg=(2.0, 4.0), translation_mm=4.0),
]

#: 2D cases: axial slices (2 mm) from the same generator.
CASES_2D = [
    _c("2d_t2", 2, "2D T2 slice, 4–6 mm field", seed=30),
    _c("2d_flair_affine", 2, "2D FLAIR, 3–5°, ±6 mm, ±5 %", seed=31, contrast="flair",
       rotation_deg=(3.0, 5.0), translation_mm=6.0, scale=0.05),
    _c("2d_nonmono", 2, "2D GM-brightest, 6–8 mm", seed=32, contrast="nonmonotonic",
       deformation_mm=(6.0, 8.0)),
]


#: Names of the 1 mm cases (≈ 8× the voxels of 2 mm; the slowest methods skip them).
CASES_1MM = tuple(c.name for c in CASES_3D if c.settings.get("voxel_size", 2.0) < 2.0)


def all_cases() -> list:
    """Every case of the suite (the real 2D pair only when its folder exists)."""
    cases = CASES_3D + CASES_2D
    if (REAL_2D / "fixed.mhd").is_file():
        cases.append(Case("2d_real_brain", 2, {}, real_dir=REAL_2D,
                          note="real 2D multimodal pair: no truth (mask Dice, NMI only)"))
    return cases


#: ``--quick``: two 2 mm 3D cases and one 2D case.
QUICK = ("t2_small", "flair_affine", "2d_t2")
