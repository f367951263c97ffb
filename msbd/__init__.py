"""Multi-Stage Blended Diffusion: megapixel text-guided editing (Ackermann & Li, 2022)."""
