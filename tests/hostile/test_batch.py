"""Hostile inputs to the cohort runner (elastix-bridge batch / elastix_bridge.batch.register_many).

Refusals happen before anything is created and cost milliseconds (no cluster). The resume and
failure-log cases register for real, on an in-process Dask cluster (threads, no worker processes),
with a 36 x 36 translation on elastix.
"""
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from helpers.command import run
from helpers.maps import write_parameter_file

pytest.importorskip("distributed")
pytest.importorskip("itk")
from elastix_bridge.batch import ManifestError, read_manifest, register_many  # noqa: E402
from elastix_bridge.batch.runner import WORKER_BASELINE_BYTES  # noqa: E402
from elastix_bridge.core.output_folder import LOCK_NAME  # noqa: E402

TRANSLATION = {"Registration": ["MultiResolutionRegistration"], "NumberOfResolutions": ["1"],
               "Metric": ["AdvancedMeanSquares"], "Optimizer": ["AdaptiveStochasticGradientDescent"],
               "MaximumNumberOfIterations": ["10"], "Transform": ["TranslationTransform"],
               "ImageSampler": ["Full"], "ResultImageFormat": ["mha"]}


@pytest.fixture(scope="module")
def cohort(inputs, tmp_path_factory):
    """A folder with the 36 x 36 pair, a translation map and a helper to write manifests: (folder, params, write)."""
    folder = tmp_path_factory.mktemp("hostile-batch")
    for name in ("fixed", "moving"):
        (folder / f"{name}.mha").write_bytes(Path(inputs[name]).read_bytes())
    params = write_parameter_file(folder / "translation.txt", TRANSLATION)

    def write(text: str, name: str = "pairs.csv", where: Path = folder) -> Path:
        (where / name).write_text(text)
        return where / name

    return folder, params, write


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes, to show nothing was written or removed."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused(capsys, folder: Path, out: Path, *argv) -> str:
    """Run the command, expect exit 1 without a traceback and with nothing written or removed; its stderr."""
    before = _snapshot(folder)
    out_before = _snapshot(out) if out.is_dir() else None
    code, _, err = run(capsys, "batch", *argv)
    assert code == 1 and err.startswith("elastix-bridge: error: ") and "Traceback" not in err, err
    assert _snapshot(folder) == before
    assert (_snapshot(out) if out.is_dir() else None) == out_before
    assert not (out / ".batch").exists() or out_before is not None
    assert not list(folder.rglob(LOCK_NAME))
    return err


# ------------------------------------------------------------------------------------------------
# Ids and manifests: every offending row named, nothing created
# ------------------------------------------------------------------------------------------------

ROW = "fixed.mha,moving.mha"
ID_CASES = {
    "summary.csv": ("summary.csv", ["id summary.csv is a name the batch writes", "rename the pair"]),
    "summary.json": ("summary.json", ["id summary.json is a name the batch writes"]),
    "failed": ("failed", ["id failed is a name the batch writes"]),
    "dot-batch": (".batch", ["'.batch' cannot name a folder", "starting with a letter or digit"]),
    "case-variant": ("Summary.CSV", ["id Summary.CSV is a name the batch writes", "in any case"]),
    "upper-failed": ("FAILED", ["id FAILED is a name the batch writes"]),
    "separator": ("a/b", ["'a/b' cannot name a folder"]),
    "backslash": ("a\\b", ["cannot name a folder"]),
    "dot": (".", ["'.' cannot name a folder"]),
    "dotdot": ("..", ["'..' cannot name a folder"]),
    "too-long": ("x" * 250, ["cannot name a folder; use up to 200"]),
}


@pytest.mark.parametrize("pair_id, needles", list(ID_CASES.values()), ids=list(ID_CASES))
def test_an_id_that_cannot_be_a_pair_folder_is_refused(cohort, tmp_path, capsys, pair_id, needles):
    folder, params, write = cohort
    manifest = write(f"id,fixed,moving\nok,{ROW}\n{pair_id},{ROW}\n")
    err = _refused(capsys, folder, tmp_path / "out", manifest, "-p", params, "-out", tmp_path / "out")
    assert "row 2" in err and "nothing was registered" in err
    for needle in needles:
        assert needle in err


MANIFEST_CASES = {
    "every-offending-row": ("id,fixed,moving\nsummary.csv,{r}\nok,{r}\nfailed,{r}\nsummary.json,{r}\n",
                            ["3 problem(s)", "row 1 (id summary.csv)", "row 3 (id failed)", "row 4 (id summary.json)"]),
    "case-duplicates": ("id,fixed,moving\nPatient1,{r}\npatient1,{r}\n",
                        ["row 2 (id patient1): id patient1 is also row 1's (Patient1", "case-insensitive"]),
    "empty-id": ("id,fixed,moving\n,{r}\n", ["row 1: no id"]),
    "missing-column": ("id,fixed\na,fixed.mha\n", ["no column moving", "every row needs id, fixed and moving"]),
    "header-only": ("id,fixed,moving\n", ["it has no rows", "give a header"]),
    "empty-file": ("", ["it has no rows"]),
    "row-longer-than-header": ("id,fixed,moving\na,{r},extra\n", ["row 1 has 1 cell(s) more than the header",
                                                                  "quote a cell"]),
    "missing-file-outside-folder": ("id,fixed,moving\na,../absent/f.mha,moving.mha\n", ["absent", "f.mha",
                                                                                       "does not exist"]),
}


@pytest.mark.parametrize("text, needles", list(MANIFEST_CASES.values()), ids=list(MANIFEST_CASES))
def test_manifest_problems_are_listed_before_anything_is_created(cohort, tmp_path, capsys, text, needles):
    folder, params, write = cohort
    manifest = write(text.format(r=ROW))
    err = _refused(capsys, folder, tmp_path / "out", manifest, "-p", params, "-out", tmp_path / "out")
    for needle in needles:
        assert needle in err


def test_a_manifest_with_bom_crlf_and_paths_outside_its_folder_is_read(cohort, tmp_path):
    folder, _, _ = cohort
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "pairs.csv").write_bytes(f"\ufeffid,fixed,moving\r\na,{folder}/fixed.mha,../../{folder.name}/moving.mha\r\n"
                                    .replace(f"../../{folder.name}", os.path.relpath(folder, sub)).encode("utf-8"))
    (pair,) = read_manifest(sub / "pairs.csv")
    assert pair.id == "a" and pair.moving.resolve() == (folder / "moving.mha").resolve()


# ------------------------------------------------------------------------------------------------
# The output folder: nothing of the user's overwritten or removed
# ------------------------------------------------------------------------------------------------


def test_out_equal_to_the_manifest_file_is_refused(cohort, capsys):
    folder, params, write = cohort
    manifest = write(f"id,fixed,moving\na,{ROW}\n")
    err = _refused(capsys, folder, folder / "no-such", manifest, "-p", params, "-out", manifest)
    assert "is an existing file, not a folder" in err and "give a folder path" in err


def test_an_id_naming_an_input_in_the_manifest_folder_is_refused(cohort, capsys):
    folder, params, write = cohort
    manifest = write(f"id,fixed,moving\nfixed.mha,{ROW}\n")
    err = _refused(capsys, folder, folder, manifest, "-p", params, "-out", folder)
    assert "fixed.mha is an existing file, where the batch writes the pair's folder" in err
    assert "lies in pair fixed.mha's folder" in err and "never removes an input" in err


@pytest.mark.parametrize("make, needles", [
    (lambda out: (out / "a").write_text("mine"), ["out/a is an existing file", "move it away"]),
    (lambda out: (out / "failed").write_text("mine"), ["failed is a file", "the batch writes its own folder"]),
    (lambda out: (out / ".batch").write_text("mine"), [".batch is a file"]),
    (lambda out: (out / "summary.csv").mkdir(), ["summary.csv is a folder", "give another -out"]),
    (lambda out: ((out / "a").mkdir(), (out / "a" / "notes.txt").write_text("mine")),
     ["out/a is a folder this batch did not write", "move it away"]),
], ids=["pair-folder-is-file", "failed-is-file", "state-is-file", "summary-is-folder", "foreign-pair-folder"])
def test_what_is_in_the_way_in_out_is_named_and_kept(cohort, tmp_path, capsys, make, needles):
    folder, params, write = cohort
    out = tmp_path / "out"
    out.mkdir()
    make(out)
    manifest = write(f"id,fixed,moving\na,{ROW}\n", "one.csv")
    err = _refused(capsys, folder, out, manifest, "-p", params, "-out", out)
    for needle in needles:
        assert needle in err


def test_an_input_inside_a_folder_the_batch_replaces_is_refused(cohort, tmp_path, capsys):
    folder, params, _ = cohort
    out = tmp_path / "out"
    (out / ".batch").mkdir(parents=True)
    (out / ".batch" / "t0.txt").write_text("(Transform \"TranslationTransform\")\n")
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"id,fixed,moving,t0\na,{folder}/fixed.mha,{folder}/moving.mha,out/.batch/t0.txt\n")
    err = _refused(capsys, tmp_path, out, manifest, "-p", params, "-out", out)
    assert "t0.txt lies in a name the batch writes" in err and "Move it out of" in err


# ------------------------------------------------------------------------------------------------
# Settings: refused up front with the number needed
# ------------------------------------------------------------------------------------------------

SETTING_CASES = {
    "retries-negative": (["--retries", "-1"], ["retries (--retries) -1", "0 or more"]),
    "workers-zero": (["--workers", "0"], ["workers (--workers) 0", "at least 1"]),
    "threads-zero": (["--threads-per-worker", "0"], ["threads_per_worker (--threads-per-worker) 0"]),
    "memory-10MB": (["--memory-limit", "10MB"], ["10.0 MiB per worker is below what a worker needs",
                                                 "give --memory-limit"]),
    "memory-1GB": (["--memory-limit", "1GB"], ["1.0 GiB per worker is below what a worker needs",
                                               f"{WORKER_BASELINE_BYTES / 2**30:.1f} GiB for a worker"]),
    "memory-zero": (["--memory-limit", "0"], ["memory_limit (--memory-limit) 0"]),
    "workers-with-scheduler": (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"],
                               ["size the LocalCluster the batch starts, not a cluster of your own"]),
}


@pytest.mark.parametrize("flags, needles", list(SETTING_CASES.values()), ids=list(SETTING_CASES))
def test_settings_out_of_range_are_refused_before_anything_is_created(cohort, tmp_path, capsys, flags, needles):
    folder, params, write = cohort
    manifest = write(f"id,fixed,moving\na,{ROW}\n", "one.csv")
    err = _refused(capsys, folder, tmp_path / "out", manifest, "-p", params, "-out", tmp_path / "out", *flags)
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err


def test_an_empty_out_is_refused_not_taken_as_the_working_folder(cohort, capsys, monkeypatch):
    folder, params, write = cohort
    manifest = write(f"id,fixed,moving\na,{ROW}\n", "one.csv")
    monkeypatch.chdir(folder)
    err = _refused(capsys, folder, folder / "no-such", manifest, "-p", params, "-out", "")
    assert "output directory (-out) is an empty path" in err and "give the cohort's folder" in err


def test_pair_objects_from_python_get_the_same_id_checks(cohort, tmp_path):
    from elastix_bridge.batch.manifest import Pair

    folder, params, _ = cohort
    pairs = [Pair(i, folder / "fixed.mha", folder / "moving.mha") for i in ("a", "summary.JSON", "A")]
    with pytest.raises(ManifestError) as caught:
        register_many(pairs, params, tmp_path / "out")
    assert len(caught.value.problems) == 2 and "summary.JSON is a name the batch writes" in str(caught.value)
    assert "id A is also row 1's (a: ids that differ only in case" in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, warned", [(7, True), (None, False)])
def test_threads_above_the_cores_are_capped_with_a_warning(cohort, tmp_path, caplog, extra, warned):
    """The cap is applied with the settings, before the manifest is read (a missing one here: refused after it)."""
    _, params, _ = cohort
    cores = len(os.sched_getaffinity(0))
    threads = cores + extra if extra else 1
    with caplog.at_level(logging.WARNING, logger="elastix_bridge"), pytest.raises(FileNotFoundError):
        register_many(tmp_path / "missing.csv", [str(params)], tmp_path / "out", threads_per_worker=threads)
    assert (f"--threads-per-worker {threads} is more than the {cores} CPU core(s)" in caplog.text) is warned
    assert not (tmp_path / "out").exists()


def test_without_dask_the_install_fix_is_given_before_anything_is_created(cohort, tmp_path, capsys, monkeypatch):
    folder, params, write = cohort
    manifest = write(f"id,fixed,moving\na,{ROW}\n", "one.csv")
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails as if not installed
    err = _refused(capsys, folder, tmp_path / "out", manifest, "-p", params, "-out", tmp_path / "out")
    assert "needs dask.distributed" in err and 'pip install "elastix-bridge[batch]"' in err
    with pytest.raises(ImportError, match="elastix-bridge\\[batch\\]"):
        register_many(manifest, params, tmp_path / "api-out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "api-out").exists()


# ------------------------------------------------------------------------------------------------
# Resume and failure logs: registered for real on an in-process cluster
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def done(cohort, client, tmp_path_factory):
    """A complete one-pair cohort: (manifest, params, out); tests copy ``out`` before they change it."""
    folder, params, write = cohort
    manifest = write(f"id,fixed,moving\na,{ROW}\n", "resume.csv")
    out = tmp_path_factory.mktemp("done") / "out"
    (out / "failed").mkdir(parents=True)
    (out / "failed" / "a.log").write_text("an earlier failure of pair a\n")
    records = register_many(manifest, params, out, client=client, progress=False)
    assert [r["status"] for r in records] == ["complete"], records
    return manifest, params, out


def _copy(out: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(out, tmp_path / "out", symlinks=True))


def test_a_completed_pair_removes_its_stale_failure_log(done):
    _, _, out = done
    assert not (out / "failed" / "a.log").exists() and (out / "a" / "TransformParameters.0.txt").is_file()
    assert not list(out.rglob(LOCK_NAME)) and json.loads((out / "summary.json").read_text())["pairs"][0]["id"] == "a"


def _break_result(out):
    (out / "a" / "result.0.mha").unlink()


def _truncate_transform(out):
    path = out / "a" / "TransformParameters.0.txt"
    path.write_text(path.read_text()[:40])


def _remove_folder(out):
    import shutil

    shutil.rmtree(out / "a")


def _corrupt_state(out):
    (out / ".batch" / "pairs" / "a.json").write_text('{"id": "a", "status": "compl')


@pytest.mark.parametrize("damage, reason", [
    (_break_result, "result.0.mha are missing"),
    (_truncate_transform, "TransformParameters.0.txt ("),
    (_corrupt_state, "a.json cannot be read"),
    (_remove_folder, "out/a is missing"),
], ids=["result-deleted", "transform-truncated", "state-corrupt", "folder-removed"])
def test_resume_redoes_a_pair_whose_files_changed_and_says_why(done, client, tmp_path, caplog, damage, reason):
    manifest, params, out = done
    out = _copy(out, tmp_path)
    damage(out)
    with caplog.at_level(logging.WARNING, logger="elastix_bridge"):
        records = register_many(manifest, params, out, client=client, progress=False)
    assert [r["status"] for r in records] == ["complete"]
    assert "pair a is registered again" in caplog.text and reason in caplog.text
    assert (out / "a" / "result.0.mha").is_file() and len((out / "a" / "TransformParameters.0.txt").read_text()) > 40
    again = register_many(manifest, params, out, client=client, progress=False)
    assert [r["status"] for r in again] == ["skipped"]  # now whole again


def test_resume_refuses_a_pair_folder_replaced_by_a_file(done, tmp_path, capsys):
    manifest, params, out = done
    out = _copy(out, tmp_path)
    import shutil

    shutil.rmtree(out / "a")
    (out / "a").write_text("my notes\n")
    err = _refused(capsys, manifest.parent, out, manifest, "-p", params, "-out", out)
    assert "pair a:" in err and "is an existing file, where the batch writes the pair's folder" in err


def test_a_pairs_registration_names_its_inputs_as_the_command_does(cohort, tmp_path):
    """The runner registers a pair with the command's own file registration (register_files, Python
    arguments): a missing fixed image is named as the command names it, before anything is created."""
    from elastix_bridge.batch.manifest import Pair
    from elastix_bridge.batch.pair import PairSettings, register_pair

    folder, params, _ = cohort
    pair = Pair("a", tmp_path / "absent.mha", folder / "moving.mha", fixed_mask=folder / "fixed.mha",
                moving_mask=folder / "moving.mha")
    with pytest.raises((OSError, ValueError)) as caught:
        register_pair(pair, PairSettings(str(tmp_path), (str(params),), "elastix", 1, 0), tmp_path / "out")
    assert "absent.mha" in str(caught.value) and "fixed image (-f)" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_out_equal_to_the_manifest_folder_with_subject_folders_named_as_ids_is_refused(cohort, tmp_path, capsys):
    """The layout of docs/cohorts.md (sub-01/t1.mha beside the manifest) with -out the manifest's own folder: the
    batch would replace sub-01/ (the subject's images) by the pair's results."""
    folder, params, _ = cohort
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-01" / "t1.mha").write_bytes((folder / "moving.mha").read_bytes())
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"id,fixed,moving\nsub-01,{folder}/fixed.mha,sub-01/t1.mha\n")
    err = _refused(capsys, tmp_path, tmp_path, manifest, "-p", params, "-out", tmp_path)
    assert "sub-01 is a folder this batch did not write" in err
    assert "t1.mha lies in pair sub-01's folder, which the batch replaces" in err
