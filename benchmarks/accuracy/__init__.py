"""Accuracy suite: when does IMPACT register better than its peers? Run ``python -m benchmarks.accuracy.run``."""
