"""``elastix-bridge model check``: does a feature model see alignment for a pair of modalities?

Real verdicts on an aligned 2D pair from the MNI template (``make_demo_pair``'s fixed T1 and the same
image through the demo's T2-like contrast, so both are aligned exactly): MIND-SSC sees alignment between
T1 and T2-like; a model that passes the z-scored intensity on does not (its minimum is at another shift),
yet the same model sees alignment between T1 and T1, so the verdict is the modality pair's, not the model's.
"""
import json

import numpy as np
import pytest

from helpers.command import assert_one_line_error
from helpers.paths import shared_path
from helpers.torchscript import scripted_model

pytest.importorskip("torch")

INTENSITY = """
class Model(nn.Module):
    def forward(self, x: torch.Tensor, n_layers: torch.Tensor, stats: torch.Tensor,
                direction: torch.Tensor) -> List[torch.Tensor]:
        return [(x - stats[2]) / stats[3]]
"""


def _aligned_t2(folder, dimension):
    """The demo pair at 4 mm in ``folder``, and ``t2.nii.gz``: its fixed T1 image in the demo's T2-like
    contrast, so aligned with it. Returns (make_demo_pair's paths, the T2-like image's path)."""
    import itk

    from elastix_bridge.demo_data import make_demo_pair, remap_contrast

    paths = make_demo_pair(folder, dimension=dimension, voxel_size=4.0)
    fixed = itk.imread(str(paths["fixed"]), itk.F)
    t1 = itk.array_from_image(fixed).astype(np.float64)
    mask = itk.array_from_image(itk.imread(str(paths["fixed_mask"]))).astype(bool)
    t2 = itk.image_from_array((1000 * remap_contrast(t1, float(np.percentile(t1[mask], 95)), "t2")).astype(np.float32))
    t2.CopyInformation(fixed)
    itk.imwrite(t2, str(folder / "t2.nii.gz"))
    return paths, folder / "t2.nii.gz"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Aligned 2D pair at 4 mm: ``fixed`` (T1), ``t2`` (the fixed image's T2-like contrast), a 3D image."""
    import itk

    folder = tmp_path_factory.mktemp("check")
    paths, _ = _aligned_t2(folder, 2)
    volume = itk.image_from_array(np.ones((4, 5, 6), np.float32))
    itk.imwrite(volume, str(folder / "volume.nii.gz"))
    intensity = scripted_model(folder, "intensity.pt", INTENSITY)
    return {"fixed": str(paths["fixed"]), "t2": str(folder / "t2.nii.gz"), "mask": str(paths["fixed_mask"]),
            "volume": str(folder / "volume.nii.gz"), "intensity": str(intensity)}


def test_mind_sees_alignment_between_t1_and_t2_like(plugin, pair):
    from elastix_bridge.models.alignment_check import check_alignment

    report = check_alignment("mind-ssc-2d", pair["fixed"], pair["t2"])
    assert report.sees_alignment, report.text()
    assert report.problems == []
    assert set(report.profiles) == {"x", "y"}
    for profile in report.profiles.values():
        assert [s for s, _ in profile] == [-8, -4, -2, -1, 0, 1, 2, 4, 8]
        values = dict(profile)
        assert values[0] == report.d0 == min(values.values())
        assert min(values[-8], values[8]) >= 1.5 * report.d0  # the rule's rise for L2
    assert report.voxels > 500


def test_intensity_model_cannot_compare_t1_with_t2_like(plugin, pair):
    from elastix_bridge.models.alignment_check import check_alignment

    report = check_alignment(pair["intensity"], pair["fixed"], pair["t2"])
    assert not report.sees_alignment
    assert any(p.startswith("minimum at shift") for p in report.problems), report.problems
    assert "cannot compare these two modalities" in report.verdict and "mind-ssc" in report.verdict


def test_intensity_model_sees_alignment_between_two_t1_images(plugin, pair):
    from elastix_bridge.models.alignment_check import check_alignment

    report = check_alignment(pair["intensity"], pair["fixed"], pair["fixed"], distance="NCC", mask=pair["mask"],
                             shifts=[2, 4, 8])
    assert report.sees_alignment, report.text()
    assert report.d0 == pytest.approx(-1.0, abs=1e-5)
    assert report.mask == f"mask {pair['mask']}"


def test_judge_profiles_rules():
    from elastix_bridge.models.alignment_check import judge_profiles

    good = [(-4, 3.0), (-2, 2.0), (0, 1.0), (2, 2.0), (4, 3.0)]
    assert judge_profiles(1.0, {"x": good}) == []
    assert judge_profiles(0.0, {"x": [(-2, 1e-6), (0, 0.0), (2, 1e-6)]}) == []  # D(0) = 0: any rise
    shifted = [(-4, 3.0), (-2, 0.5), (0, 1.0), (2, 2.0), (4, 3.0)]
    (problem,) = judge_profiles(1.0, {"y": shifted})
    assert problem.startswith("minimum at shift -2 mm along y")
    flat = [(-4, 1.3), (-2, 1.2), (0, 1.0), (2, 1.2), (4, 1.3)]
    assert judge_profiles(1.0, {"x": flat}) == [
        "too flat along x: D(-4 mm) is only 30.0 % above |D(0)| (needs 50 % for L2)",
        "too flat along x: D(+4 mm) is only 30.0 % above |D(0)| (needs 50 % for L2)"]
    assert judge_profiles(-1.0, {"x": [(-4, -0.9), (0, -1.0), (4, -0.9)]}, "Cosine") == []  # 10 % >= 5 %
    second = [(-4, 3.0), (-2, 2.0), (0, 1.0), (2, 2.5), (4, 2.0), (8, 3.0)]
    (problem,) = judge_profiles(1.0, {"z": second})
    assert problem.startswith("not monotone along z: D falls from 2.5 at +2 mm to 2 at +4 mm")
    assert "not finite" in judge_profiles(float("nan"), {"x": good})[0]


def test_command_exit_codes_and_profile(plugin, pair, capsys):
    from elastix_bridge.cli import main

    assert main(["model", "check", "mind-ssc-2d", pair["fixed"], pair["t2"], "--shifts", "2", "4"]) == 0
    out = capsys.readouterr().out
    assert "shift mm" in out and "verdict: sees alignment" in out
    assert [line.split()[0] for line in out.splitlines() if line.startswith("  x ") or line.startswith("  y ")] \
        == ["x", "y"]
    assert len(out.splitlines()[-3].split()) == 1 + 5  # the axis name and -4 -2 0 2 4
    assert main(["model", "check", pair["intensity"], pair["fixed"], pair["t2"], "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["sees_alignment"] is False and report["problems"]
    assert report["verdict"].startswith("does NOT see alignment: minimum at shift")
    assert len(report["profiles"]["x"]) == 9 and report["rule"]["min_rise"] == 0.5


@pytest.mark.parametrize("case, needles", [
    ("dimension", ("is 2D but the moving image", "is 3D", "same dimension")),
    ("missing", ("moving image", "does not exist")),
    ("distance", ("unknown distance 'l2' (did you mean L2?)",)),
    ("shifts", ("each > 0",)),
    ("model", ("model file not found",)),
])
def test_command_bad_inputs(plugin, pair, tmp_path, capsys, case, needles):
    from elastix_bridge.cli import main

    args = {"dimension": ["mind-ssc-2d", pair["fixed"], pair["volume"]],
            "missing": ["mind-ssc-2d", pair["fixed"], str(tmp_path / "absent.nii.gz")],
            "distance": ["mind-ssc-2d", pair["fixed"], pair["t2"], "--distance", "l2"],
            "shifts": ["mind-ssc-2d", pair["fixed"], pair["t2"], "--shifts", "0", "2"],
            "model": [str(tmp_path / "none.pt"), pair["fixed"], pair["t2"]]}[case]
    code = main(["model", "check"] + args)
    assert_one_line_error(code, capsys.readouterr().err, *needles)


def test_command_takes_the_options_from_an_impact_map(plugin, pair, capsys):
    from pathlib import Path

    from elastix_bridge.cli import main

    preset = Path(__file__).resolve().parents[1] / "parameter_files" / "impact_mind_static_2d.txt"
    assert main(["model", "check", "-p", str(preset), pair["fixed"], pair["t2"], "--shifts", "4", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('model mind-ssc-2d, distance L2, layers mask "1", model grid 4 x 4 mm')  # level 0's
    # A model given on the command line replaces the map's; the map's other options stay.
    assert main(["model", "check", "-p", str(preset), pair["intensity"], pair["fixed"], pair["t2"],
                 "--distance", "NCC", "--shifts", "4", "8"]) == 1
    assert "distance NCC" in capsys.readouterr().out


@pytest.mark.shared
def test_m730_cannot_compare_t1_with_t2_like(plugin, tmp_path):
    """M730 (3D, 32 channels; it diverges on T1 <-> T2-like registration): its distance is largest when aligned.

    At 4 mm and shifts of 4 and 8 mm to stay fast (docs/models.md has the 2 mm profile); between two T1
    images it sees alignment.
    """

    from elastix_bridge.models.alignment_check import check_alignment

    model = shared_path("models", "M730_1_Layers.pt")
    paths, t2 = _aligned_t2(tmp_path, 3)
    report = check_alignment(model, paths["fixed"], t2, shifts=[4, 8])
    assert not report.sees_alignment
    assert all(report.d0 == max(v for _, v in profile) for profile in report.profiles.values()), report.text()
    assert check_alignment(model, paths["fixed"], paths["fixed"], shifts=[4, 8]).sees_alignment
