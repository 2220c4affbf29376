"""C stand-ins for native upstream plugins, compiled with the system C compiler."""
import shutil
import subprocess
from pathlib import Path

import pytest

STANDIN_C = r"""
#include <stdio.h>
#include <stdlib.h>

/* elastix: extern "C" int ImpactMetricInstallComponent(elastix::ComponentDatabase *) */
__attribute__((visibility("default"))) int ImpactMetricInstallComponent(void *component_database) {
  const char *marker = getenv("STANDIN_MARKER");
  const char *ret = getenv("STANDIN_RETURN");
  if (marker) {
    FILE *f = fopen(marker, "a");
    if (f) { fprintf(f, "called with %p\n", component_database); fclose(f); }
  }
  return ret ? atoi(ret) : 7;
}
"""


def compile_library(cc, folder: Path, file_name: str, soname=None, needed=(), source=STANDIN_C) -> Path:
    """Compile `source` into folder/file_name with an optional SONAME and extra DT_NEEDED entries.

    Each name in `needed` is satisfied at link time by an empty library of that SONAME, deleted
    afterwards, so the result needs a library that does not exist.
    """
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / f"{file_name}.c"
    src.write_text(source)
    cmd = [cc, "-shared", "-fPIC", "-o", str(folder / file_name), str(src)]
    if soname:
        cmd.append(f"-Wl,-soname,{soname}")
    fakes = folder / f".fakes-{file_name}"
    if needed:
        fakes.mkdir()
        (fakes / "empty.c").write_text("int fake_dependency_marker;\n")
        cmd += ["-Wl,--no-as-needed", f"-L{fakes}"]
        for name in needed:
            subprocess.run([cc, "-shared", "-fPIC", f"-Wl,-soname,{name}", "-o", str(fakes / name),
                            str(fakes / "empty.c")], check=True, capture_output=True)
            cmd.append(f"-l:{name}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    shutil.rmtree(fakes, ignore_errors=True)
    if proc.returncode != 0:
        pytest.skip(f"the C compiler {cc} could not build a shared library: {proc.stderr.strip()[-300:]}")
    return folder / file_name
