"""Hostile round 2 (docs/bad_input.md): bad inputs whose message misled or that were silently ignored.

Each case asserts the exit code or exception, that the one-line message names the cause and the fix,
and that nothing was written or removed (no ``.elastix-bridge.lock`` left). In-process and fast.
"""
from __future__ import annotations

import logging

import pytest

from elastix_bridge.core.parameters import ParameterMap
from helpers.command import assert_one_line_error, registration_args, run
from helpers.maps import elastix_map, impact_parameters, write_parameter_file

itk = pytest.importorskip("itk")


# ------------------------------------------------------------------------------------------------
# Misleading messages and inputs silently ignored (cases C13, K03, batch log, batch columns,
# doctor cache, R03/R05, model export window)


def _snapshot(folder):
    """Every file under ``folder`` with its bytes, to show nothing was written or removed."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("engine_flag", [["--engine", "elastix"], ["--engine=elastix"]])
def test_impact_on_the_elastix_engine_without_a_native_plugin_is_refused_before_work(
        engine_flag, inputs, tmp_path, capsys, monkeypatch):
    from elastix_bridge.runtime import native_plugins

    monkeypatch.delenv(native_plugins.NATIVE_PLUGIN_ENV, raising=False)
    monkeypatch.setattr(native_plugins, "native_plugin_offered", lambda: False)
    out = tmp_path / "out"
    code, _, err = run(capsys, *registration_args(inputs, out), *engine_flag)
    assert_one_line_error(code, err, "parameter map 0", '(Metric "Impact")', "elastix engine",
                          "no IMPACT plugin", "--engine auto", native_plugins.NATIVE_PLUGIN_ENV,
                          "docs/native_plugins.md")
    assert not out.exists()


def test_impact_on_the_elastix_engine_is_refused_by_the_api_and_allowed_with_a_plugin(monkeypatch):
    from elastix_bridge.runtime import native_plugins
    from elastix_bridge.validation import validate_maps

    maps = [ParameterMap.from_dict(impact_parameters())]
    monkeypatch.setattr(native_plugins, "native_plugin_offered", lambda: False)
    with pytest.raises(ValueError, match="cannot run on the elastix engine here.*engine 'auto' or 'bridge'"):
        validate_maps(maps, ["elastix"], dimension=2)
    validate_maps(maps, ["bridge"], dimension=2)  # the bridge engine runs it
    monkeypatch.setattr(native_plugins, "native_plugin_offered", lambda: True)
    validate_maps(maps, ["elastix"], dimension=2)  # a native plugin: elastix runs it


@pytest.mark.parametrize("mask,stray", [("2", "'2'"), ("1x", "'x'"), ("yes", "'e', 's', 'y'")])
def test_a_layers_mask_of_other_characters_than_0_and_1_is_named(mask, stray, inputs, tmp_path, capsys):
    params = write_parameter_file(tmp_path / "mask.txt", impact_parameters(ImpactLayersMask0=mask))
    out = tmp_path / "out"
    code, _, err = run(capsys, *registration_args(inputs, out, params))
    assert_one_line_error(code, err, "ImpactLayersMask0", f"the mask '{mask}' holds {stray}",
                          "'1' (use it) or '0' (skip it)")
    assert not out.exists()


def test_a_failed_pairs_message_and_summary_name_the_kept_log(inputs, tmp_path):
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from elastix_bridge.batch import register_many

    far = itk.imread(str(inputs["moving"]))
    far.SetOrigin([5000.0, 5000.0])  # no overlap: the elastix stage fails
    itk.imwrite(far, str(tmp_path / "far.mha"))
    (tmp_path / "pairs.csv").write_text(f"id,fixed,moving\nb,{inputs['fixed']},far.mha\n")
    params = write_parameter_file(tmp_path / "t.txt", {**elastix_map(), "ImageSampler": ["Random"]})
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        (record,) = register_many(tmp_path / "pairs.csv", params, out, client=client, progress=False)
    kept = out / "failed" / "b.log"
    assert record["status"] == "failed" and kept.is_file()
    assert str(kept) in record["error"] and ".batch/tmp" not in record["error"], record["error"]
    summary = (out / "summary.csv").read_text()
    assert str(kept) in summary and ".batch/tmp" not in summary
    assert not list(out.rglob(".elastix-bridge.lock"))


@pytest.mark.parametrize("header,named", [("id,fixed,moving,fixed", "fixed"),
                                          ("id,id,fixed,moving,moving", "id, moving")])
def test_a_manifest_naming_a_column_twice_is_refused(header, named, inputs, tmp_path, capsys):
    folder = tmp_path / "cohort"
    folder.mkdir()
    cells = ",".join(str(inputs["fixed"]) for _ in header.split(","))
    (folder / "pairs.csv").write_text(f"{header}\n{cells}\n")
    params = write_parameter_file(folder / "t.txt", elastix_map())
    before = _snapshot(folder)
    out = tmp_path / "out"
    code, _, err = run(capsys, "batch", folder / "pairs.csv", "-p", params, "-out", out)
    assert code == 1 and "Traceback" not in err, err
    assert f"the header names column(s) {named} more than once" in err and "keep one column" in err
    assert _snapshot(folder) == before and not out.exists()


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_doctor_refuses_a_cache_folder_that_is_a_file(where, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from elastix_bridge import doctor
    from elastix_bridge.runtime import loader

    a_file = tmp_path / "cache-file"
    a_file.write_text("mine")
    monkeypatch.setenv(loader.CACHE_ENV, str(a_file if where == "a file" else a_file / "sub"))
    monkeypatch.delenv(loader.PLUGIN_ENV, raising=False)
    report = doctor.collect_report(trial_preload=False)
    assert not report["ok"]
    (problem,) = [p for p in report["problems"] if "cache folder" in p["what"]]
    assert f"{a_file} is a file, not a folder" in problem["why"] and "ELASTIX_BRIDGE_CACHE" in problem["fix"]
    assert "Impact can run here" not in doctor.format_report(report)
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("fmt,needles", [
    ("MHA", ["result.0.mhd + result.0.raw", '(ResultImageFormat "mha")']),
    ("Mhd", ["result.0.mhd + result.0.raw", '(ResultImageFormat "mhd")']),
    ("NII.GZ", ["NIfTI writer refuses", '(ResultImageFormat "nii.gz")']),
    (".mha", ["without its dot", "result.0..mha", '(ResultImageFormat "mha")']),
])
def test_result_formats_elastix_would_write_under_another_name_are_refused(fmt, needles, inputs, tmp_path, capsys):
    params = write_parameter_file(tmp_path / "fmt.txt", impact_parameters(ResultImageFormat=fmt))
    out = tmp_path / "out"
    code, _, err = run(capsys, *registration_args(inputs, out, params))
    assert_one_line_error(code, err, f'(ResultImageFormat "{fmt}")', *needles)
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["PNG", "NRRD", "mha", "nii.gz"])
def test_result_formats_itk_writes_as_spelt_are_accepted(fmt):
    from elastix_bridge.validation import validate_maps

    validate_maps([ParameterMap.from_dict(impact_parameters(ResultImageFormat=fmt,
                                                            ResultImagePixelType="unsigned char"))], dimension=2)


@pytest.mark.parametrize("flags,needles", [
    (["--window", "100", "-100"], ["--window", "(100.0, -100.0)", "'ct' only", "--normalisation ct"]),
    (["--normalisation", "zscore", "--window", "-1000", "1000"], ["'ct' only, not 'zscore'", "drop the window"]),
    (["--normalisation", "ct", "--window", "100", "-100"], ["low < high", "got (100.0, -100.0)"]),
    (["--normalisation", "ct", "--window", "5", "5"], ["low < high", "got (5.0, 5.0)"]),
    (["--normalisation", "ct"], ["--window LOW HIGH", "none given"]),
])
def test_model_export_refuses_a_window_it_would_ignore_or_misuse(flags, needles, tmp_path, capsys):
    pytest.importorskip("torch")
    net = tmp_path / "net.pt"
    net.write_bytes(b"not read: refused first")
    code, _, err = run(capsys, "model", "export", net, "-o", tmp_path / "x.pt", "--layers", "conv1",
                       "--dimension", "2", *flags)
    assert_one_line_error(code, err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pt"]
