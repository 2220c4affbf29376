"""Signals sent to the command: SIGTERM (timeout, Slurm, docker stop), SIGHUP (a closed terminal) and
SIGINT (Ctrl-C), before a stage starts, during an elastix stage and during a bridge stage.

Each case runs ``python -m elastix_bridge.cli`` on a tiny pair with a map whose stage would take
minutes, sends the signal at its moment and asserts: the exit code (128 + signal), the time from
the signal to the exit (robust bound on a loaded 2-core machine), no lock, no
TransformParameters / IterationInfo / result file left, and the reason at the end of elastix.log.
The cases run concurrently (each process spends ~10 s importing itk).
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.maps import elastix_map, impact_parameters, write_parameter_file

REPO = Path(__file__).resolve().parents[2]
EXIT_WITHIN_S = 10.0  # from the signal to the exit, on a loaded machine (measured ~1-2 s)
# Fresh interpreters that import itk and stages that must be caught running (30-75 s per test measured on 2
# busy cores).
pytestmark = pytest.mark.slow


def _long_maps(folder: Path) -> dict:
    """Parameter files whose one stage runs for minutes: on elastix, and on the bridge engine."""
    elastix = dict(elastix_map(iterations=2_000_000), ImageSampler=["Full"])
    bridge = impact_parameters(MaximumNumberOfIterations=1_000_000)
    return {"elastix": write_parameter_file(folder / "elastix-long.txt", elastix),
            "bridge": write_parameter_file(folder / "bridge-long.txt", bridge)}


def _stage_running(out: Path, engine: str) -> bool:
    """The stage is under way: elastix's scratch folder exists, or the bridge's IterationInfo has rows."""
    if not out.is_dir():
        return False
    if engine == "elastix":
        return any(p.name.startswith(".stage0-") for p in out.iterdir())
    info = out / "IterationInfo.0.R0.txt"
    return info.is_file() and info.stat().st_size > 200


# (signal, engine, moment): "before" is while the command still imports itk (nothing is owned yet).
CASES = [(signal.SIGTERM, "elastix", "during"), (signal.SIGINT, "elastix", "during"),
         (signal.SIGHUP, "bridge", "during"), (signal.SIGTERM, "bridge", "before")]


@pytest.fixture(scope="module")
def interrupted_runs(inputs, tmp_path_factory):
    """Start every case at once, signal each at its moment; {case: (exit code, seconds to exit, out, stderr)}."""
    folder = tmp_path_factory.mktemp("signals")
    maps = _long_maps(folder)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runs = {}
    for sig, engine, moment in CASES:
        out = folder / f"out-{sig.name}-{engine}-{moment}"
        cmd = [sys.executable, "-m", "elastix_bridge.cli", "-f", str(inputs["fixed"]), "-m", str(inputs["moving"]),
               "-p", str(maps[engine]), "-out", str(out), "-loglevel", "off", "-threads", "1"]
        runs[(sig, engine, moment)] = (subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env), out)
    started = time.monotonic()
    send_at, sent, results = {}, {}, {}
    while len(results) < len(runs) and time.monotonic() < started + 240:
        now = time.monotonic()
        for case, (process, out) in runs.items():
            sig, engine, moment = case
            if case in results:
                continue
            if case not in send_at and (moment == "before" or _stage_running(out, engine)):
                send_at[case] = now + (0.5 if moment == "during" else 3.0)  # well inside the stage / itk's import
            if case not in sent and case in send_at and now >= send_at[case]:
                process.send_signal(sig)
                sent[case] = now
            elif case in sent and process.poll() is not None:
                results[case] = (process.returncode, time.monotonic() - sent[case], out, process.stderr.read())
        time.sleep(0.05)
    for case, (process, _) in runs.items():
        if case not in results:
            process.kill()
            results[case] = (None, None, runs[case][1], process.stderr.read())
    return results


@pytest.mark.parametrize("case", CASES, ids=[f"{s.name}-{e}-{m}" for s, e, m in CASES])
def test_signal_cleans_up_and_exits_with_128_plus_signal(interrupted_runs, case):
    sig, engine, moment = case
    code, seconds, out, err = interrupted_runs[case]
    print(f"{sig.name} {moment} {engine} stage: exit {code}, {seconds or 0:.2f} s after the signal")  # -s shows it
    assert code == 128 + sig, f"exit {code}, stderr:\n{err}"
    assert seconds < EXIT_WITHIN_S, f"{seconds:.1f} s from {sig.name} to exit"
    assert "Traceback" not in err
    assert f"interrupted by {sig.name}" in err
    left = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    assert ".elastix-bridge.lock" not in left
    assert not [n for n in left if n.startswith(("TransformParameters", "IterationInfo", "result", ".stage"))], left
    if moment == "before":
        assert left == [], left  # nothing was owned yet: nothing written
    else:
        assert left == ["elastix.log"], left
        assert f"elastix-bridge: error: interrupted by {sig.name}" in (out / "elastix.log").read_text()


def test_python_api_ctrl_c_stops_an_elastix_stage_at_once_and_leaves_the_programs_handlers(inputs, tmp_path):
    """In Python, Ctrl-C during an elastix stage raises KeyboardInterrupt at once (the stage's child process is
    killed, nothing runs on), the call's outputs are removed, and no SIGTERM / SIGHUP handler is installed."""
    import threading

    import itk

    from elastix_bridge.api import elastix_registration_method

    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    fixed, moving = (itk.imread(str(inputs[name]), itk.F) for name in ("fixed", "moving"))
    out = tmp_path / "out"
    out.mkdir()
    long_map = dict(elastix_map(iterations=2_000_000), ImageSampler=["Full"])
    sent = []

    def ctrl_c_once_the_stage_runs():
        while not _stage_running(out, "elastix"):
            time.sleep(0.05)
        time.sleep(0.5)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_once_the_stage_runs, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        elastix_registration_method(fixed, moving, parameter_object=[long_map], output_directory=str(out),
                                    log_to_file=True)
    assert time.monotonic() - sent[0] < EXIT_WITHIN_S  # the stage itself would run for minutes
    assert sorted(p.name for p in out.iterdir()) == ["elastix.log"]
    assert "interrupted by SIGINT" in (out / "elastix.log").read_text()
    assert {number: signal.getsignal(number) for number in handlers} == handlers


def test_sigterm_stops_a_batch_and_leaves_no_unfinished_pair(inputs, tmp_path):
    """SIGTERM to `elastix-bridge batch` while a pair registers: exit 143 with the cause, the LocalCluster
    closed, no unfinished pair folder in .batch/tmp, no lock anywhere under -out."""
    maps = _long_maps(tmp_path)
    manifest = tmp_path / "cohort.csv"
    manifest.write_text(f"id,fixed,moving\np1,{inputs['fixed']},{inputs['moving']}\n")
    out = tmp_path / "cohort"
    cmd = [sys.executable, "-m", "elastix_bridge.cli", "batch", str(manifest), "-p", str(maps["bridge"]),
           "-out", str(out), "--workers", "1", "--threads-per-worker", "1", "--no-progress"]
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        pair_folders = list((out / ".batch" / "tmp").glob("p1-*")) if (out / ".batch" / "tmp").is_dir() else []
        if any(_stage_running(folder, "bridge") for folder in pair_folders):
            break
        time.sleep(0.1)
    assert process.poll() is None, process.stderr.read()
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    err = process.stderr.read()
    assert code == 128 + signal.SIGTERM, err
    assert time.monotonic() - sent < 30, "the batch took too long to stop"
    assert "interrupted by SIGTERM" in err and "run the same command again" in err, err
    assert not list((out / ".batch" / "tmp").glob("*")) if (out / ".batch" / "tmp").exists() else True
    assert not (out / "p1").exists()  # an unfinished pair is absent, never half there
    assert not list(out.rglob(".elastix-bridge.lock"))
