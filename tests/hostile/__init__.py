"""Hostile-input suite (a package, so its modules may share names with tests/, e.g. test_batch.py)."""
