"""The STRIDE engine: pure Python/torch, no Dagster. Usable from a notebook."""
