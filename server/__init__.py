"""The modeldock inference server."""
