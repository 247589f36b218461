"""Interceptors, one module per API shape: they read what the gateway needs from a request and its
response (validation, stream rewrites, and what is recorded) while the relay moves the bytes."""
