"""Networks of Stable Diffusion v1 with CompVis parameter names; no sampling, no file I/O."""
