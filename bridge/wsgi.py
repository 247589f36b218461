"""The WSGI app object: ``gunicorn -k gevent bridge.wsgi:app``."""

# Patch first: under gunicorn's gevent worker this is a no-op (already patched), and it keeps
# ad-hoc runs (python -m bridge.wsgi, other servers) from importing ssl/requests unpatched.
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

from bridge.config import ConfigError  # noqa: E402

try:
    from bridge.app import create_app  # noqa: E402

    app = create_app()
except ConfigError as error:
    sys.stderr.write(f"bridge: configuration error: {error}\n")
    sys.exit(3)  # gunicorn's "worker failed to boot": the master stops instead of respawning
