"""Progress bars: one per resolution level, counting iterations (not L-BFGS line-search rows)."""
import io
from types import SimpleNamespace

from elastix_bridge.core.parameters import ParameterMap
from elastix_bridge.progress import StageProgress


def test_one_bar_per_level_counting_main_iterations_only():
    out = io.StringIO()
    bars = StageProgress(2, ParameterMap.from_dict({"MaximumNumberOfIterations": ["3", "2"]}), file=out)
    for level, phase in [(0, "Main"), (0, "LineOptimizing"), (0, "Main"), (0, "Main"), (1, "Main"), (1, "Main")]:
        bars(level, SimpleNamespace(metric=-0.5, phase=phase))
    assert bars.bar.n == 2 and bars.bar.total == 2  # level 1's own bar and budget
    bars.close()
    final = [line for line in out.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    assert any(line.startswith("stage 2 level 0") and "3/3" in line for line in final)
    assert final[-1].startswith("stage 2 level 1") and "2/2" in final[-1] and "metric -0.500000" in final[-1]
