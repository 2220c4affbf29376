"""Tests of the QC picture (elastix_bridge.qc.write_qc_figure) and of ``elastix-bridge --qc``.

Registrations are quick elastix runs (itk-elastix, few iterations) on small synthetic images made
here: a 2D pair, and a 3D pair stored with permuted/flipped direction cosines and anisotropic
spacing. The folded-voxel count the picture reports (PNG text chunk ``elastix-bridge-qc``) is
compared with a count from ``itk.transformix_jacobian``, a separate transformix call.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

itk = pytest.importorskip("itk")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from elastix_bridge import cli  # noqa: E402
from elastix_bridge.qc import display_slice, display_views, write_qc_figure  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE_2D, SIZE_3D = (1300, 850), (1300, 1500)  # PNG pixels at dpi 100 (write_qc_figure's docstring)

# A 3D direction whose index axes are physical +y, -z and -x (a proper rotation: det = +1).
PERMUTED = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)


def blobs_2d(shift=(0.0, 0.0)) -> np.ndarray:
    """[y, x] = [40, 48] float32: an ellipse with a bar, shifted by ``shift`` voxels (y, x)."""
    yy, xx = np.mgrid[0:40, 0:48].astype(np.float32)
    cy, cx = 19 + shift[0], 24 + shift[1]
    a = 100 * np.exp(-(((yy - cy) / 10) ** 2 + ((xx - cx) / 14) ** 2))
    a += 60 * ((np.abs(yy - cy + 6) < 2) & (np.abs(xx - cx) < 7))
    return a.astype(np.float32)


def head_3d(shift: float = 0.0) -> np.ndarray:
    """[z, y, x] = [20, 24, 28] float32 "head" (LPS, identity direction): ellipsoid, right ball, anterior-superior nose."""
    zz, yy, xx = np.mgrid[0:20, 0:24, 0:28].astype(np.float32)
    a = 100 * (((xx - 14 - shift) / 10) ** 2 + ((yy - 12) / 9) ** 2 + ((zz - 9) / 7) ** 2 < 1)
    a += 80 * (((xx - 14 - shift) / 3) ** 2 + ((yy - 6) / 2.5) ** 2 + ((zz - 13) / 3) ** 2 < 1)
    a += 50 * (((xx - 10 - shift) / 2.5) ** 2 + ((yy - 12) / 2.5) ** 2 + ((zz - 9) / 2.5) ** 2 < 1)
    return a.astype(np.float32)


def image(array, spacing):
    img = itk.image_from_array(np.ascontiguousarray(array))
    img.SetSpacing(spacing)
    return img


def permuted(img):
    """The same physical image on a grid with direction PERMUTED (exact: nearest neighbour on voxel centres)."""
    sx, sy, sz = img.GetSpacing()
    nx, ny, nz = img.GetLargestPossibleRegion().GetSize()
    return itk.resample_image_filter(
        img, size=[ny, nz, nx], output_spacing=[sy, sz, sx],
        output_origin=[(nx - 1) * sx, 0.0, (nz - 1) * sz], output_direction=itk.matrix_from_array(PERMUTED),
        interpolator=itk.NearestNeighborInterpolateImageFunction.New(img), default_pixel_value=-1)


def register(fixed, moving, kinds, out: Path, iterations=10):
    """A quick elastix registration (default maps, 2 levels) writing IterationInfo files into ``out``."""
    po = itk.ParameterObject.New()
    for kind in kinds:
        pmap = po.GetDefaultParameterMap(kind, 2)
        pmap["MaximumNumberOfIterations"] = [str(iterations)]
        pmap["WriteIterationInfo"] = ["true"]
        po.AddParameterMap(pmap)
    out.mkdir(parents=True, exist_ok=True)
    _, tp = itk.elastix_registration_method(fixed, moving, parameter_object=po, output_directory=str(out),
                                            log_to_file=True, log_to_console=False)
    return tp


def independent_folds(moving, tp, folder: Path):
    """det <= 0 voxels and the determinant array from itk.transformix_jacobian (it reads .nii files)."""
    po = itk.ParameterObject.New()
    for i in range(tp.GetNumberOfParameterMaps()):
        pmap = dict(tp.GetParameterMap(i))
        pmap["ResultImageFormat"] = ["nii"]
        po.AddParameterMap(pmap)
    folder.mkdir()
    _, det = itk.transformix_jacobian(moving, po, output_directory=str(folder) + "/")
    d = itk.array_from_image(det)
    return int(np.count_nonzero(d <= 0)), d


def qc_numbers(path: Path) -> dict:
    """The picture's size and the numbers it carries in its ``elastix-bridge-qc`` text chunk."""
    with Image.open(path) as png:
        return dict(json.loads(png.text["elastix-bridge-qc"]), size=png.size)


def folding_bspline_map(img, amplitude: float) -> dict:
    """A hand-made B-spline TransformParameters map on ``img``'s grid (2D, identity direction).

    Two neighbouring control points near the centre get x-coefficients +amplitude and -amplitude
    (mm): with amplitude well above the grid spacing the transform folds between them.
    """
    size = [int(s) for s in img.GetLargestPossibleRegion().GetSize()]
    spacing = [float(s) for s in img.GetSpacing()]
    origin = [float(o) for o in img.GetOrigin()]
    grid_spacing = 8.0
    grid = [int(np.ceil((n - 1) * s / grid_spacing)) + 3 for n, s in zip(size, spacing)]
    coefficients = np.zeros((2, grid[1], grid[0]))  # [x/y component, node y, node x]
    cy, cx = grid[1] // 2, grid[0] // 2
    coefficients[0, cy, cx], coefficients[0, cy, cx + 1] = amplitude, -amplitude
    values = [f"{v:.6f}" for v in coefficients.ravel()]
    text = lambda xs: [f"{x:g}" for x in xs]  # noqa: E731
    return {
        "Transform": ["BSplineTransform"], "NumberOfParameters": [str(len(values))], "TransformParameters": values,
        "InitialTransformParameterFileName": ["NoInitialTransform"], "HowToCombineTransforms": ["Compose"],
        "FixedImageDimension": ["2"], "MovingImageDimension": ["2"],
        "FixedInternalImagePixelType": ["float"], "MovingInternalImagePixelType": ["float"],
        "Size": text(size), "Index": ["0", "0"], "Spacing": text(spacing), "Origin": text(origin),
        "Direction": ["1", "0", "0", "1"], "UseDirectionCosines": ["true"],
        "GridSize": text(grid), "GridIndex": ["0", "0"], "GridSpacing": text([grid_spacing] * 2),
        "GridOrigin": text([o - grid_spacing for o in origin]), "GridDirection": ["1", "0", "0", "1"],
        "BSplineTransformSplineOrder": ["3"], "UseCyclicTransform": ["false"],
        "ResampleInterpolator": ["FinalBSplineInterpolator"], "FinalBSplineInterpolationOrder": ["3"],
        "Resampler": ["DefaultResampler"], "DefaultPixelValue": ["0"], "ResultImageFormat": ["nii"],
        "ResultImagePixelType": ["float"], "CompressResultImage": ["false"],
    }


@pytest.fixture(scope="module")
def pair_2d():
    return image(blobs_2d(), (1.0, 1.5)), image(blobs_2d((2, -3)), (1.0, 1.5))


@pytest.fixture(scope="module")
def run_2d(pair_2d, tmp_path_factory):
    out = tmp_path_factory.mktemp("run2d")
    return register(*pair_2d, ["rigid", "bspline"], out), out


@pytest.fixture(scope="module")
def pair_3d():
    """(fixed, moving, fixed with identity direction): anisotropic spacing, direction PERMUTED."""
    identity = image(head_3d(), (1.0, 1.2, 2.0))
    return permuted(identity), permuted(image(head_3d(1.5), (1.0, 1.2, 2.0))), identity


# ---------------------------------------------------------------------------------------------
# Pictures of real registrations
# ---------------------------------------------------------------------------------------------


def test_2d_picture(pair_2d, run_2d, tmp_path):
    fixed, moving = pair_2d
    tp, out = run_2d
    path = write_qc_figure(fixed, moving, tp, tmp_path / "qc.png", output_directory=out)
    assert path == tmp_path / "qc.png"
    numbers = qc_numbers(path)
    assert numbers["size"] == SIZE_2D
    expected, det = independent_folds(moving, tp, tmp_path / "jacobian")
    assert numbers["folded_voxels"] == expected
    assert numbers["voxels"] == det.size == 40 * 48
    assert numbers["jacobian_min"] == pytest.approx(float(det.min()), rel=1e-6)
    # Two stages (rigid, B-spline) of two levels each, 10 iterations per level.
    assert [(f["stage"], f["level"], f["iterations"]) for f in numbers["iteration_files"]] == [
        (0, 0, 10), (0, 1, 10), (1, 0, 10), (1, 1, 10)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jacobian", "qc.png"]  # no temporary leftovers
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the user's usual permissions, not a temp file's 0600


def test_2d_picture_from_files_and_last_stage(pair_2d, run_2d, tmp_path):
    """Images as file names, the transform found in the output directory, only the last stage's curves."""
    fixed, moving = pair_2d
    _, out = run_2d
    itk.imwrite(fixed, str(tmp_path / "fixed.mha"))
    itk.imwrite(moving, str(tmp_path / "moving.mha"))
    (tmp_path / "qc.png").write_bytes(b"old")  # replaced by the complete new picture
    write_qc_figure(tmp_path / "fixed.mha", tmp_path / "moving.mha", None, tmp_path / "qc.png",
                    output_directory=out, stages="last")
    numbers = qc_numbers(tmp_path / "qc.png")
    assert [(f["stage"], f["level"]) for f in numbers["iteration_files"]] == [(1, 0), (1, 1)]


def test_3d_picture_with_permuted_direction(pair_3d, tmp_path):
    fixed, moving, _ = pair_3d
    tp = register(fixed, moving, ["bspline"], tmp_path / "out", iterations=8)
    path = write_qc_figure(fixed, moving, tp, tmp_path / "qc3d.png", output_directory=tmp_path / "out")
    numbers = qc_numbers(path)
    assert numbers["size"] == SIZE_3D
    expected, det = independent_folds(moving, tp, tmp_path / "jacobian")
    assert numbers["folded_voxels"] == expected and numbers["voxels"] == det.size == 20 * 24 * 28
    assert [(f["stage"], f["level"], f["iterations"]) for f in numbers["iteration_files"]] == [(0, 0, 8), (0, 1, 8)]


def test_3d_views_do_not_depend_on_storage_order(pair_3d):
    """Axial/coronal/sagittal panels of the permuted image equal those of the identity-direction image."""
    fixed, _, identity = pair_3d
    a, b = itk.array_from_image(fixed), itk.array_from_image(identity)
    views_a, views_b = display_views(fixed), display_views(identity)
    assert [v[0].split(",")[0] for v in views_a] == ["axial", "coronal", "sagittal"]
    for va, vb in zip(views_a, views_b):
        np.testing.assert_array_equal(display_slice(a, va), display_slice(b, vb))
        assert va[5] == vb[5]  # (row, column) pixel size in mm: same physical aspect
        assert va[6] == vb[6]  # orientation letters
    # Radiological axial view: patient right on the left, anterior at the top; the right ball is left of centre.
    axial = display_slice(b, views_b[0])
    assert views_b[0][6] == ("R", "L", "A", "P")
    ball_columns = np.nonzero((axial == 150).any(axis=0))[0]
    assert ball_columns.max() < axial.shape[1] // 2
    # Coronal and sagittal: superior at the top; the anterior-superior nose is in the upper half.
    sagittal = display_slice(b, views_b[2])
    assert views_b[2][6] == ("A", "P", "S", "I")
    nose_rows = np.nonzero((sagittal == 180).any(axis=1))[0]
    nose_cols = np.nonzero((sagittal == 180).any(axis=0))[0]
    assert nose_rows.max() < sagittal.shape[0] // 2 and nose_cols.max() < sagittal.shape[1] // 2


# ---------------------------------------------------------------------------------------------
# Folding, transformix's files, errors
# ---------------------------------------------------------------------------------------------


def test_folding_transform_reports_folds(pair_2d, tmp_path, monkeypatch):
    fixed, moving = pair_2d
    po = itk.ParameterObject.New()
    po.AddParameterMap(folding_bspline_map(fixed, amplitude=40.0))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    write_qc_figure(fixed, moving, po, tmp_path / "folded.png")
    assert list(cwd.iterdir()) == []  # transformix wrote nothing into the working directory
    numbers = qc_numbers(tmp_path / "folded.png")
    expected, _ = independent_folds(moving, po, tmp_path / "jacobian")
    assert numbers["folded_voxels"] == expected > 0
    assert numbers["folded_percent"] == pytest.approx(100 * expected / (40 * 48))
    assert numbers["iteration_files"] == []  # no output directory: no metric curves


def test_identity_like_transform_has_no_folds(pair_2d, tmp_path):
    fixed, moving = pair_2d
    po = itk.ParameterObject.New()
    po.AddParameterMap(folding_bspline_map(fixed, amplitude=0.5))
    numbers = qc_numbers(write_qc_figure(fixed, moving, po, tmp_path / "smooth.png"))
    assert numbers["folded_voxels"] == 0 and numbers["jacobian_min"] > 0


def test_errors_name_the_cause(pair_2d, tmp_path):
    fixed, moving = pair_2d
    po = itk.ParameterObject.New()
    po.AddParameterMap(folding_bspline_map(fixed, amplitude=0.0))
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        write_qc_figure(fixed, moving, po, tmp_path / "missing" / "qc.png")
    with pytest.raises(ValueError, match="stages must be"):
        write_qc_figure(fixed, moving, po, tmp_path / "qc.png", stages="first")
    other = image(np.zeros((30, 30), np.float32), (1.0, 1.0))
    with pytest.raises(ValueError, match="not the fixed image's.*pass the fixed image the registration used"):
        write_qc_figure(other, moving, po, tmp_path / "qc.png")
    with pytest.raises(FileNotFoundError, match="no TransformParameters"):
        write_qc_figure(fixed, moving, None, tmp_path / "qc.png", output_directory=tmp_path)
    assert not any(p.suffix in (".png", ".tmp") for p in tmp_path.iterdir())


def test_import_loads_neither_torch_nor_matplotlib():
    """Importing elastix_bridge.qc and the command loads neither torch nor matplotlib."""
    code = ("import sys, elastix_bridge.qc, elastix_bridge.cli; "
            "heavy = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


PARAMETERS = """\
(Registration "MultiResolutionRegistration")
(NumberOfResolutions 2)
(Metric "AdvancedMattesMutualInformation")
(Optimizer "AdaptiveStochasticGradientDescent")
(MaximumNumberOfIterations 12)
(Transform "BSplineTransform")
(FinalGridSpacingInPhysicalUnits 10)
(ImageSampler "RandomCoordinate")
(NumberOfSpatialSamples 500)
(NewSamplesEveryIteration "true")
(WriteIterationInfo "true")
(ResultImageFormat "mhd")
"""


def test_command_qc_flag(pair_2d, tmp_path, capsys):
    fixed, moving = pair_2d
    itk.imwrite(fixed, str(tmp_path / "fixed.mha"))
    itk.imwrite(moving, str(tmp_path / "moving.mha"))
    (tmp_path / "params.txt").write_text(PARAMETERS)
    out = tmp_path / "out"
    code = cli.main(["-f", str(tmp_path / "fixed.mha"), "-m", str(tmp_path / "moving.mha"),
                     "-p", str(tmp_path / "params.txt"), "-out", str(out), "-loglevel", "off", "--qc"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "qc.png" in captured.out
    numbers = qc_numbers(out / "qc.png")
    assert numbers["size"] == SIZE_2D
    assert [(f["stage"], f["level"], f["iterations"]) for f in numbers["iteration_files"]] == [(0, 0, 12), (0, 1, 12)]
    tp = itk.ParameterObject.New()
    tp.ReadParameterFile(str(out / "TransformParameters.0.txt"))
    expected, _ = independent_folds(itk.imread(str(tmp_path / "moving.mha"), itk.F), tp, tmp_path / "jacobian")
    assert numbers["folded_voxels"] == expected
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_command_without_qc_writes_no_picture(pair_2d, tmp_path, capsys):
    fixed, moving = pair_2d
    itk.imwrite(fixed, str(tmp_path / "fixed.mha"))
    itk.imwrite(moving, str(tmp_path / "moving.mha"))
    (tmp_path / "params.txt").write_text(PARAMETERS.replace("12", "2"))
    out = tmp_path / "out"
    assert cli.main(["-f", str(tmp_path / "fixed.mha"), "-m", str(tmp_path / "moving.mha"),
                     "-p", str(tmp_path / "params.txt"), "-out", str(out), "-loglevel", "off"]) == 0
    capsys.readouterr()
    assert not (out / "qc.png").exists()
