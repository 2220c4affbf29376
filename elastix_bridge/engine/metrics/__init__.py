"""The metrics: elastix's classic metrics and the IMPACT metric (docs/design.md §E7, §I)."""
