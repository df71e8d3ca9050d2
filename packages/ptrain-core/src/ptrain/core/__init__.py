"""ptrain.core: shared distributed-training primitives (filled in by the foundation issue)."""
