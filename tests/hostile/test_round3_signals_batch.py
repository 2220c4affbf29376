"""Hostile round 3: a signal lost in C code (SG01, SG01c) and a batch pair folder written by another run (CC04).

All in-process (no subprocess, no cluster): the swallowing C code and the concurrent single run are
simulated where they happen.
"""
import json
import os
import signal
import time
from pathlib import Path

import pytest

from helpers.command import run
from helpers.maps import write_parameter_file

itk = pytest.importorskip("itk")
from elastix_bridge.core import interruption  # noqa: E402
from elastix_bridge.core.output_folder import LOCK_NAME  # noqa: E402

TRANSLATION = {"Registration": ["MultiResolutionRegistration"], "NumberOfResolutions": ["1"],
               "Metric": ["AdvancedMeanSquares"], "Optimizer": ["AdaptiveStochasticGradientDescent"],
               "MaximumNumberOfIterations": ["10"], "Transform": ["TranslationTransform"],
               "ImageSampler": ["Full"], "ResultImageFormat": ["mha"]}


def _swallowed_signal(signum=signal.SIGTERM) -> None:
    """What ITK's lazy loader does to a signal: its KeyboardInterrupt is raised inside C code and lost."""
    try:
        os.kill(os.getpid(), signum)
        time.sleep(0.01)  # the handler runs here
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------------------------------------
# SG01 / SG01c: SIGTERM or Ctrl-C while ITK loads (the first seconds of every command) was lost
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_lost_in_c_code_still_stops_the_block(signum, code):
    with pytest.raises(interruption.Interrupted) as raised:
        with interruption.signals_interrupt((signal.SIGINT, signal.SIGTERM)):
            _swallowed_signal(signum)
            with pytest.raises(interruption.Interrupted):
                interruption.raise_if_swallowed()  # the checkpoint raises it again
    assert raised.value.exit_code == code  # and so does the block's end, had the checkpoint not been there
    interruption.raise_if_swallowed()  # outside the block nothing is pending


def test_plan_interrupted_while_itk_loads_exits_143_without_printing_a_plan(inputs, tmp_path, capsys, monkeypatch):
    params = write_parameter_file(tmp_path / "translation.txt", TRANSLATION)
    real = itk.ParameterObject

    class LosesTheSignal:  # the lazy loader, importing a module while SIGTERM comes
        @staticmethod
        def New():
            _swallowed_signal()
            return real.New()

    monkeypatch.setattr(itk, "ParameterObject", LosesTheSignal)
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run(capsys, "plan", "-f", inputs["fixed"], "-m", inputs["moving"], "-p", params)
    assert code == 143, (code, out, err)
    assert err.strip() == "elastix-bridge: interrupted by SIGTERM; stopped before it finished"
    assert "fits" not in out and "stage 0" not in out
    assert sorted(tmp_path.rglob("*")) == before and not list(tmp_path.rglob(LOCK_NAME))


# ------------------------------------------------------------------------------------------------
# CC04: a single run into DIR/<id> while the batch runs is kept, not replaced
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def batch_pair(inputs, tmp_path, monkeypatch):
    """``(run_pair, root)``: the batch's pair step with a fake registration that writes one file.

    ``run_pair(meanwhile)`` calls ``meanwhile(root / "a")`` during the pair's registration (the other run).
    """
    pytest.importorskip("distributed")
    from elastix_bridge.batch import evaluation, pair
    from elastix_bridge.batch.manifest import Pair
    from elastix_bridge.file_registration import FileRegistration

    root = tmp_path / "B"
    for sub in ("maps", "pairs", "attempts", "tmp"):
        (root / ".batch" / sub).mkdir(parents=True)
    settings = pair.PairSettings(str(root), (), "elastix", 1, 0, time.time())
    monkeypatch.setattr(evaluation, "final_metrics", lambda folder: {})

    def run_pair(meanwhile):
        def fake_registration(fixed, moving, parameter_files, output_directory, **options):
            out = Path(output_directory)
            out.mkdir(parents=True)
            (out / "result.0.mha").write_text("batch result")
            meanwhile(root / "a")
            return FileRegistration(out, ("result.0.mha",), (), ())

        monkeypatch.setattr(pair, "register_files", fake_registration)
        return pair.run_pair(Pair("a", inputs["fixed"], inputs["moving"]), settings, "digest")

    return run_pair, root


def _single_run(folder: Path, locked: bool = False) -> None:
    folder.mkdir()
    (folder / "result.0.mha").write_text("the single run's result")
    if locked:
        (folder / LOCK_NAME).write_text("4242 elastix-bridge ...")


@pytest.mark.parametrize("locked", [False, True], ids=["finished", "still-running"])
def test_a_pair_folder_written_by_another_run_during_the_batch_is_kept(batch_pair, locked):
    from elastix_bridge.batch.runner import output_problems

    run_pair, root = batch_pair
    record = run_pair(lambda folder: _single_run(folder, locked))
    assert record["status"] == "failed"
    assert f"{root / 'a'} was not written by this batch" in record["error"]
    assert ("lock" if locked else "no record") in record["error"]
    assert f"move {root / 'a'} away and run the same batch command again" in record["error"]
    assert (root / "a" / "result.0.mha").read_text() == "the single run's result"
    assert sorted(p.name for p in (root / "a").iterdir()) == sorted(["result.0.mha"] + [LOCK_NAME] * locked)
    assert not list((root / ".batch" / "tmp").iterdir())
    # no record kept: the next batch refuses the folder at its start instead of replacing it
    assert not (root / ".batch" / "pairs" / "a.json").exists()
    assert any("a folder this batch did not write" in p for p in output_problems(root, [_pair(root)], []))


def test_a_pair_folder_from_an_earlier_batch_is_still_replaced(batch_pair):
    run_pair, root = batch_pair
    _single_run(root / "a")  # as an earlier batch left it: recorded, older than this batch's start
    old = time.time() - 3600
    for path in (root / "a", root / "a" / "result.0.mha"):
        os.utime(path, (old, old))
    (root / ".batch" / "pairs" / "a.json").write_text(json.dumps({"id": "a", "status": "failed"}))
    record = run_pair(lambda folder: None)
    assert record["status"] == "complete", record["error"]
    assert (root / "a" / "result.0.mha").read_text() == "batch result"
    assert not list(root.rglob(LOCK_NAME))


def _pair(root):
    from elastix_bridge.batch.manifest import Pair

    return Pair("a", root / "f.mha", root / "m.mha")
