"""bridge: a self-hosted AI gateway.

Importing this package must stay cheap and side-effect free: gunicorn's config module
imports ``bridge.gunicorn_conf`` in the master before the gevent workers patch the
standard library, so nothing here may import requests, ssl or Flask.
"""
