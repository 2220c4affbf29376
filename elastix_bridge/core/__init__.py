"""The shared core, the ground floor: parameter maps, IMPACT keys, TransformParameters, images and files.

It imports nothing of the bridge above it, and importing any of its modules imports neither torch nor
itk. Its modules and what each owns: docs/design.md §2.3.
"""
