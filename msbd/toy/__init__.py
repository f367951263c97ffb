"""The embedded toy world: procedural scenes, their tiny models and the edit analyser."""
