"""Acceptance on the real 2D brain pair of upstream elastix's IMPACT tests (needs ../shared).

The command runs exactly as a user would run elastix::

    elastix-bridge -f fixed.mhd -m moving.mhd -fMask mask_fixed.mhd -mMask mask_moving.mhd \
        -p parameters.2D.IMPACT.bspline.ASGD.002.txt -out OUT

with upstream's parameter file, changed only where it must be: the model path is absolute, and
``ImpactWriteFeatureMaps`` points into the test's temporary folder. ``OUT/TransformParameters.0.txt``
is then applied with itk-elastix's transformix. Both modes must reach NMI(fixed, result) >= 1.161
(64 bins, whole images: identity gives 1.154, upstream's result image 1.161) and keep
Dice(warped moving mask, fixed mask) (mask warped with FinalBSplineInterpolationOrder 0) at or above
the mode's floor in ``DICE_FLOOR``. NMI says the registration moved towards the fixed image (a
registration that does nothing fails it); the Dice floor says it did so without pulling the head
masks apart: the Static result's displacement negated or doubled gives Dice 0.939 or 0.936 (NMI
1.125, 1.137), below both floors, while identity's own overlap is 0.979.
"""

import pytest

from helpers.paths import shared_path

itk = pytest.importorskip("itk")
pytest.importorskip("torch")

from elastix_bridge import cli  # noqa: E402
from elastix_bridge.demo import upstream_brain_parameter_file  # noqa: E402
from elastix_bridge.registration_quality import dice, nmi  # noqa: E402

pytestmark = [pytest.mark.shared, pytest.mark.slow]

DATA = ("data", "elastix-2d-brain")
UPSTREAM = "upstream-parameters.2D.IMPACT.bspline.ASGD.002.txt"
NMI_TARGET = 1.161  # upstream elastix's own result image (Impact2DStaticBaseline.mhd) reaches 1.161
# Dice floors: the worst of the correct formulation's results over RandomSeed 42 (upstream's), 1, 2, 3, less
# a margin for numerical differences between machines (about 0.005 for Static, 0.009 for Jacobian, whose
# results for the same seeds moved by up to 0.005 between earlier engine versions). Measured as this test measures:
#   Static    0.9656, 0.9637, 0.9654, 0.9548   (NMI 1.171, 1.170, 1.169, 1.162)
#   Jacobian  0.9755, 0.9751, 0.9736, 0.9749   (NMI 1.181, 1.178, 1.179, 1.180)
# Neither mode reaches identity's overlap (0.9788). For Static, its objective (R1D2
# MIND features normalised over the whole image, L2) is lower at its result than at identity or at
# elastix's Mattes MI result, and part of the gain comes from samples near the scalp leaving the moving
# mask, which elastix's valid-sample rule allows. Upstream's result overlaps better (Dice 0.977 when the
# bridge reproduces it) only through its double application of the transform at the second level
# (docs/design.md §I13 Q12), a quirk the bridge does not copy.
DICE_FLOOR = {"Static": 0.950, "Jacobian": 0.965}


def parameter_file(folder, mode: str):
    """Upstream's 2D IMPACT file with the absolute model path, feature maps into ``folder``, ``mode``."""
    shared_path(*DATA, UPSTREAM)
    return upstream_brain_parameter_file(shared_path(), folder, mode)


@pytest.mark.parametrize("mode", ["Static", "Jacobian"])
def test_brain_2d_acceptance(plugin, tmp_path, capsys, mode):
    data = shared_path(*DATA)
    out = tmp_path / "OUT"
    argv = ["-f", data / "fixed.mhd", "-m", data / "moving.mhd", "-fMask", data / "mask_fixed.mhd",
            "-mMask", data / "mask_moving.mhd", "-p", parameter_file(tmp_path, mode), "-out", out]
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 0, err
    # the command writes ResultImageFormat, default mhd, like elastix
    assert (out / "TransformParameters.0.txt").is_file() and (out / "result.0.mhd").is_file()

    fixed = itk.imread(str(data / "fixed.mhd"), itk.F)
    moving = itk.imread(str(data / "moving.mhd"), itk.F)
    fixed_mask = itk.array_from_image(itk.imread(str(data / "mask_fixed.mhd"), itk.F)) > 0
    moving_mask = itk.imread(str(data / "mask_moving.mhd"), itk.F)
    tp = itk.ParameterObject.New()
    tp.ReadParameterFile(str(out / "TransformParameters.0.txt"))
    result = itk.transformix_filter(moving, tp)
    tp.SetParameter(0, "FinalBSplineInterpolationOrder", "0")
    warped_mask = itk.array_from_image(itk.transformix_filter(moving_mask, tp)) > 0

    measured_nmi = nmi(fixed, result)
    measured_dice = dice(warped_mask, fixed_mask)
    with capsys.disabled():  # the measurement is worth seeing even when the test passes
        print(f"\n{mode}: NMI {measured_nmi:.4f} (target >= {NMI_TARGET}), "
              f"Dice {measured_dice:.4f} (floor >= {DICE_FLOOR[mode]})")
    assert measured_nmi >= NMI_TARGET, f"{mode}: NMI {measured_nmi:.4f} < {NMI_TARGET} (Dice {measured_dice:.4f})"
    assert measured_dice >= DICE_FLOOR[mode], \
        f"{mode}: Dice {measured_dice:.4f} < {DICE_FLOOR[mode]} (NMI {measured_nmi:.4f})"
