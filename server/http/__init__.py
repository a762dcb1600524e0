"""What each HTTP process runs: the ASGI edge, the infer handler per model, the other routes."""
