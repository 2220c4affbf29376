"""Images of a resolution level: level images and masks, elastix's image pyramids, the interpolators."""
