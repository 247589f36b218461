# gunicorn -c gunicorn.conf.py bridge.wsgi:app
# The settings live in bridge/gunicorn_conf.py so that `python -m bridge server` uses the same ones.
from bridge.gunicorn_conf import *  # noqa: F401,F403
