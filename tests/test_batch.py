"""Cohorts on Dask (elastix_bridge.batch): manifest checks, summary, resume, crashes of a worker."""
import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.paths import shared_path

pytest.importorskip("distributed")
from elastix_bridge.batch import ManifestError, read_manifest, register_many  # noqa: E402
from elastix_bridge.batch.manifest import read_points  # noqa: E402
from elastix_bridge.batch.runner import WORKER_BASELINE_BYTES, ClusterSize  # noqa: E402
from elastix_bridge.batch.summary import cohort_lines  # noqa: E402

GiB = 2**30


# ------------------------------------------------------------------------------------------------
# Manifests and points (no cluster)
# ------------------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_manifest_paths_are_relative_to_it_and_empty_cells_leave_options_out(tmp_path):
    folder = tmp_path / "cohort"
    folder.mkdir()
    csv_path = _write(folder / "pairs.csv", "id,fixed,moving,fixed_mask\na,f.mha,m1.mha,mask.mha\nb,f.mha,m2.mha,\n")
    a, b = read_manifest(csv_path)
    assert (a.id, a.fixed, a.moving, a.fixed_mask) == ("a", folder / "f.mha", folder / "m1.mha", folder / "mask.mha")
    assert b.fixed_mask is None and b.moving == folder / "m2.mha"
    tsv = read_manifest(_write(folder / "pairs.tsv", "id\tfixed\tmoving\na\tf.mha\tm1.mha\n"))
    jsonl = read_manifest(_write(folder / "pairs.jsonl", '{"id": "a", "fixed": "f.mha", "moving": "m1.mha"}\n'))
    assert tsv == jsonl == [a.__class__("a", folder / "f.mha", folder / "m1.mha")]


def test_manifest_problems_are_reported_together(tmp_path):
    text = ("id,fixed,moving,fixed_labels,colour\n"
            "a,f.mha,m.mha,,red\n"
            "a,f.mha,m.mha,,red\n"
            "../x,f.mha,m.mha,l.mha,red\n"
            ",f.mha,m.mha,,red\n")
    with pytest.raises(ManifestError) as caught:
        read_manifest(_write(tmp_path / "pairs.csv", text))
    problems = caught.value.problems
    assert len(problems) == 5, problems
    assert "unknown column(s) colour" in problems[0]
    assert any("id a is also row 1's" in p for p in problems)
    assert any("'../x' cannot name a folder" in p for p in problems)
    assert any("fixed_labels without moving_labels" in p for p in problems)
    assert any("row 4: no id" in p for p in problems)
    assert "5 problem(s), nothing was registered" in str(caught.value)


def test_manifest_needs_id_fixed_moving(tmp_path):
    with pytest.raises(ManifestError, match="no column moving"):
        read_manifest(_write(tmp_path / "pairs.csv", "id,fixed\na,f.mha\n"))
    with pytest.raises(FileNotFoundError, match="manifest .* does not exist"):
        read_manifest(tmp_path / "absent.csv")


def test_points_from_elastix_point_sets_and_csv(tmp_path):
    from elastix_bridge.core.geometry import ImageGeometry

    direction = np.array([[0.0, -1.0], [1.0, 0.0]])
    geometry = ImageGeometry((10, 12), np.array([2.0, 0.5]), np.array([5.0, -3.0]), direction)
    physical = read_points(_write(tmp_path / "p.txt", "point\n2\n1.5 2.5\n-3 4\n"))
    np.testing.assert_array_equal(physical, [[1.5, 2.5], [-3.0, 4.0]])
    index = read_points(_write(tmp_path / "i.txt", "index\n1\n3 4\n"), geometry)
    np.testing.assert_allclose(index, [[5.0 - 4 * 0.5, -3.0 + 3 * 2.0]])  # origin + D·S·i, ITK (x, y) order
    table = read_points(_write(tmp_path / "p.csv", "x,y\n1.5,2.5\n-3,4\n"))
    np.testing.assert_array_equal(table, physical)
    with pytest.raises(ValueError, match="line 2 says 3 points, the file has 2"):
        read_points(_write(tmp_path / "bad.txt", "point\n3\n1 2\n3 4\n"))
    with pytest.raises(ValueError, match="holds indices"):
        read_points(tmp_path / "i.txt")


def test_cohort_lines_take_the_worst_dice_as_the_smallest():
    records = [{"id": "a", "status": "complete", "wall_s": 2.0, "dice_mean": 0.9, "tre_mean_mm": 1.0},
               {"id": "b", "status": "skipped", "wall_s": 4.0, "dice_mean": 0.7, "tre_mean_mm": 3.0},
               {"id": "c", "status": "failed", "error": "x", "wall_s": 100.0}]
    mean, median, worst = cohort_lines(records)
    assert mean["status"] == "2 of 3 registered"
    assert mean["wall_s"] == pytest.approx(3.0) and median["dice_mean"] == pytest.approx(0.8)
    assert worst["dice_mean"] == 0.7 and worst["tre_mean_mm"] == 3.0 and worst["wall_s"] == 4.0


def test_cohort_lines_count_transform_warnings_and_take_the_smallest_determinant():
    records = [{"id": "a", "status": "complete", "jacobian_min": 0.5, "folded_fraction": 0.0, "transform_warnings": ""},
               {"id": "b", "status": "complete", "jacobian_min": -0.2, "folded_fraction": 0.03,
                "transform_warnings": "stage 0: the transform folds 3.00 % ..."}]
    mean, _, worst = cohort_lines(records)
    assert mean["status"] == "2 of 2 registered, 1 with transform warnings"
    assert worst["jacobian_min"] == -0.2 and worst["folded_fraction"] == 0.03


@pytest.mark.parametrize("cores, memory, peak, pairs, expected", [
    (8, 64 * GiB, 1 * GiB, 100, (8, 1)),   # one-thread registrations on every core
    (8, 64 * GiB, 1 * GiB, 2, (2, 4)),     # few pairs: the cores shared among them
    (16, 8 * GiB, 2 * GiB, 100, (2, 8)),   # memory-bound: 2 workers of 3.3 GB in 7.2 GB
    (2, 1 * GiB, 4 * GiB, 10, (1, 2)),     # never fewer than one worker
])
def test_cluster_size_from_cores_and_memory(cores, memory, peak, pairs, expected):
    size = ClusterSize.for_machine(pairs, peak, cores=cores, memory=memory)
    assert (size.workers, size.threads) == expected
    assert size.memory_limit >= WORKER_BASELINE_BYTES + peak
    assert ClusterSize.for_machine(pairs, peak, workers=3, threads=2, cores=cores, memory=memory).workers == 3


# ------------------------------------------------------------------------------------------------
# A 2D cohort from the brain pair: known shifts, one broken pair
# ------------------------------------------------------------------------------------------------

SHIFTS = [(2.0, -1.5), (-2.5, 1.0), (1.0, 2.5), (-1.5, -2.0), (3.0, 0.5), (1.0, 1.0)]  # mm, ITK (x, y)
BROKEN = "p5"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six pairs: the brain's fixed image against itself shifted by a known translation t (so fixed point
    p sits at p + t in the moving image), labels and points for Dice and TRE; pair p5's moving image is
    all NaN (its header reads, its run fails). Returns (manifest, parameter file)."""
    itk = pytest.importorskip("itk")
    from scipy import ndimage

    from elastix_bridge.core.geometry import ImageGeometry

    data = shared_path("data", "elastix-2d-brain")
    folder = tmp_path_factory.mktemp("cohort")
    fixed = itk.imread(str(data / "fixed.mhd"), itk.F)
    mask = itk.array_from_image(itk.imread(str(data / "mask_fixed.mhd"), itk.UC)) > 0
    array = itk.array_from_image(fixed)
    smooth = ndimage.gaussian_filter(array, 3.0)  # two smooth regions inside the brain mask
    labels = np.where(mask, np.where(smooth > np.median(smooth[mask]), 2, 1), 0).astype(np.uint8)
    geometry = ImageGeometry.from_itk(fixed)
    assert np.allclose(geometry.direction, np.eye(2))  # shifts in index space below

    def save(a, name):
        image = itk.image_from_array(a)
        image.CopyInformation(fixed)
        itk.imwrite(image, str(folder / name))

    def shifted(a, t, order):  # moving(y) = a(y - t)
        return ndimage.shift(a, (np.asarray(t) / geometry.spacing)[::-1], order=order, mode="nearest")

    save(array, "fixed.mha")
    save(labels, "fixed_labels.mha")
    rng = np.random.default_rng(0)
    inside = np.argwhere(mask)[:, ::-1].astype(float)  # (x, y) indices
    points = geometry.index_to_physical(inside[rng.choice(len(inside), 12, replace=False)])
    np.savetxt(folder / "fixed_points.csv", points, delimiter=",", header="x,y", comments="")
    rows = ["id,fixed,moving,fixed_labels,moving_labels,fixed_points,moving_points"]
    for i, t in enumerate(SHIFTS):
        moving = shifted(array, t, 3).astype(np.float32)
        if f"p{i}" == BROKEN:
            moving[:] = np.nan
        save(moving, f"moving_{i}.mha")
        save(shifted(labels, t, 0), f"moving_labels_{i}.mha")
        np.savetxt(folder / f"moving_points_{i}.txt", points + np.asarray(t), header=f"point\n{len(points)}",
                   comments="")
        rows.append(f"p{i},fixed.mha,moving_{i}.mha,fixed_labels.mha,moving_labels_{i}.mha,fixed_points.csv,"
                    f"moving_points_{i}.txt")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")
    preset = Path(__file__).resolve().parents[1] / "parameter_files" / "impact_mind_static_2d.txt"
    text = preset.read_text().replace('(Transform "BSplineTransform")', '(Transform "TranslationTransform")')
    text = text.replace("(MaximumNumberOfIterations 150)", "(MaximumNumberOfIterations 60)")
    (folder / "translation_impact.txt").write_text(text)
    return folder / "pairs.csv", folder / "translation_impact.txt"


def _summary(out: Path) -> list:
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # a cohort of registrations, then a resume (45-62 s measured on 2 busy cores)
def test_cohort_summary_failures_and_resume(cohort, tmp_path, plugin):
    manifest, parameters = cohort
    out = tmp_path / "out"
    environ = dict(os.environ)
    records = register_many(manifest, parameters, out, workers=2, threads_per_worker=1, progress=False)
    assert dict(os.environ) == environ  # the LocalCluster's worker variables (OMP_NUM_THREADS=1, ...) are undone
    status = {r["id"]: r["status"] for r in records}
    assert status == {**{f"p{i}": "complete" for i in range(5)}, BROKEN: "failed"}
    failed = next(r for r in records if r["id"] == BROKEN)
    assert "non-finite" in failed["error"] and not (out / BROKEN).exists()
    for r in records:
        if r["status"] == "complete":
            folder = out / r["id"]
            assert {"TransformParameters.0.txt", "elastix.log", "result.0.mha"} <= {p.name for p in folder.iterdir()}
            assert r["tre_mean_mm"] < 0.5 and r["dice_mean"] > 0.9, r  # the known shift is recovered
            assert set(r) >= {"dice_1", "dice_2", "metric_0", "wall_s", "peak_rss_mb"} and "dice_0" not in r
            # the transform check of the last stage (elastix_bridge.transform_check): a smooth, unfolded result
            assert r["folded_fraction"] == 0 and r["jacobian_min"] > 0 and r["transform_warnings"] == ""
            assert r["peak_rss_mb"] > 100 and r["attempts"] == 1
    rows = _summary(out)
    assert [row["id"] for row in rows] == [f"p{i}" for i in range(6)] + ["cohort mean", "cohort median",
                                                                         "cohort worst"]
    complete = [r for r in records if r["status"] == "complete"]
    assert float(rows[-1]["dice_mean"]) == pytest.approx(min(r["dice_mean"] for r in complete), rel=1e-5)
    assert float(rows[-3]["tre_mean_mm"]) == pytest.approx(np.mean([r["tre_mean_mm"] for r in complete]), rel=1e-5)
    assert json.loads((out / "summary.json").read_text())["cohort"][0]["status"] == "5 of 6 registered"
    assert not (out / ".batch" / "tmp").exists()  # no half-written pair is left behind

    # The same command again: the five complete pairs are skipped, the broken one is tried again.
    stamp = (out / "p0" / "TransformParameters.0.txt").stat().st_mtime_ns
    again = register_many(manifest, parameters, out, workers=1, threads_per_worker=1, progress=False)
    assert [r["status"] for r in again] == ["skipped"] * 5 + ["failed"]
    assert (out / "p0" / "TransformParameters.0.txt").stat().st_mtime_ns == stamp
    assert [r["tre_mean_mm"] for r in again[:5]] == [r["tre_mean_mm"] for r in records[:5]]


def test_cohort_validation_names_every_problem_before_any_run(cohort, tmp_path):
    manifest, parameters = cohort
    bad = tmp_path / "pairs.csv"
    lines = manifest.read_text().splitlines()
    base = manifest.parent
    bad.write_text("\n".join([lines[0], lines[1].replace("moving_0.mha", "absent.mha"), lines[2]]) + "\n")
    for name in ("fixed.mha", "fixed_labels.mha", "moving_1.mha", "moving_labels_0.mha", "moving_labels_1.mha",
                 "fixed_points.csv", "moving_points_0.txt", "moving_points_1.txt"):
        (tmp_path / name).symlink_to(base / name)
    (tmp_path / "moving_points_1.txt").unlink()
    (tmp_path / "moving_points_1.txt").write_text("point\n1\n1 2\n")
    with pytest.raises(ManifestError) as caught:
        register_many(bad, parameters, tmp_path / "out", workers=1, progress=False)
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert "pair p0: moving" in problems[0] and "absent.mha does not exist" in problems[0]
    assert "pair p1: 12 fixed points but 1 moving points" in problems[1]
    assert not (tmp_path / "out").exists()


@pytest.fixture
def environ_kept():
    """A LocalCluster made here sets its workers' variables in this process's environment: undo it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.slow  # worker processes that import itk and register (30-42 s measured on 2 busy cores)
def test_a_killed_worker_loses_nothing(cohort, tmp_path, plugin, environ_kept):
    """The test kills the process of a worker while it registers a pair: Dask runs the pair again on a
    fresh worker and it completes; the summary counts both attempts."""
    from distributed import Client, LocalCluster

    manifest, parameters = cohort
    out = tmp_path / "out"
    for name in manifest.parent.iterdir():
        (tmp_path / name.name).symlink_to(name)
    two = tmp_path / "two.csv"
    two.write_text("\n".join(manifest.read_text().splitlines()[:3]) + "\n")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        result = {}
        runner = threading.Thread(target=lambda: result.update(records=register_many(
            two, parameters, out, client=client, threads_per_worker=1, progress=False)))
        runner.start()
        victim = None
        deadline = time.time() + 120
        while victim is None and time.time() < deadline:
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                time.sleep(1.0)  # mid-task: the worker is importing or registering
                victim = busy[0]
            time.sleep(0.05)
        assert victim is not None, "no pair started within 2 minutes"
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=300)
    records = result["records"]
    assert [r["status"] for r in records] == ["complete", "complete"]
    assert sorted(r["attempts"] for r in records) == [1, 2]
    assert all((out / r["id"] / "TransformParameters.0.txt").is_file() for r in records)


def test_batch_command_reports_the_manifest_problems_and_registers_nothing(inputs, tmp_path, capsys):
    from helpers.command import run

    manifest = _write(tmp_path / "pairs.csv", f"id,fixed,moving\na,{inputs['fixed']},{inputs['moving']}\n"
                                              f"b,{inputs['fixed']},{tmp_path / 'absent.mha'}\n")
    code, out, err = run(capsys, "batch", manifest, "-p", inputs["params"], "-out", tmp_path / "out")
    assert code == 1 and "Traceback" not in err
    assert err.startswith("elastix-bridge: error: ") and "1 problem(s), nothing was registered" in err
    assert "pair b: moving" in err and "absent.mha does not exist" in err
    assert not (tmp_path / "out").exists()
    code, _, err = run(capsys, "batch", manifest, "-p", inputs["params"], "-out", tmp_path / "out",
                       "--memory-limit", "lots")  # a flag error: one line, exit 1 (flags.ExactParser)
    assert code == 1 and "'lots' is not a memory size" in err
