"""Shared building blocks: errors, the run configuration, tensor signatures, data intake."""
