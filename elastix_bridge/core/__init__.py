"""The shared core: parameter maps, IMPACT keys, TransformParameters, images and files.

``parameters`` (elastix parameter files and maps), ``impact_parameters`` (the IMPACT keys per level
and model), ``elastix_names`` (elastix's key and component names), ``transform_io`` (TransformParameters
both ways), ``iteration_info`` (IterationInfo tables), ``image_io``, ``files`` (atomic writes),
``output_folder`` and ``validation`` (one pass over a request before any work). Importing any of
these imports neither torch nor the plugin.
"""
