"""The command line in-process (``elastix-bridge argv``), its registration flags and its one-line errors."""


def run(capsys, *argv):
    """``elastix-bridge argv`` in-process: (exit code, stdout, stderr)."""
    from elastix_bridge import cli

    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def registration_args(inputs, out, params=None, **replace):
    """The elastix flags for ``inputs``; ``replace`` maps a flag (without '-') to another value."""
    flags = {"f": inputs["fixed"], "m": inputs["moving"], "fMask": inputs["mask"], "mMask": inputs["mask"],
             "p": params or inputs["params"], "out": out, "loglevel": "off"}
    flags.update(replace)
    return [part for flag, value in flags.items() for part in (f"-{flag}", value)]


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    """Exit 1, a single ``elastix-bridge: error:`` line without traceback, containing every needle."""
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("elastix-bridge: error: ")
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]
