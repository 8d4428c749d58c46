"""canary stage."""
