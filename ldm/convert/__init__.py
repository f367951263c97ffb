"""Key mappings from the diffusers / transformers layouts to our CompVis-named modules."""
