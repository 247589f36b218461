"""``python -m bridge server [flags]``: check the settings, then run gunicorn with them."""

from __future__ import annotations

import argparse
import os
import sys

from bridge.config import FLAG_VARIABLES, ConfigError, load_settings, serving_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--http-address", help="address to listen on (env CODER_HTTP_ADDRESS, default 127.0.0.1:3000)")
    parser.add_argument("--workers", type=int, help="gunicorn worker processes (env WEB_CONCURRENCY, default 2)")
    for flag, variable in FLAG_VARIABLES.items():
        # `--aibridge-enabled` alone means true, like `--aibridge-enabled=true`.
        parser.add_argument(flag, dest=variable, nargs="?", const="true", metavar="VALUE", help=f"sets {variable}")


def run(args: argparse.Namespace) -> int:
    flags = {variable: getattr(args, variable) for variable in FLAG_VARIABLES.values()
             if getattr(args, variable, None) is not None}
    config_path = getattr(args, "config", None)
    try:
        load_settings(flags=flags, config_path=config_path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    # Flags travel to the workers as environment variables, which they outrank there as here.
    env = {**os.environ, **flags}
    if config_path:
        env["CODER_CONFIG_PATH"] = config_path
    if args.http_address:
        env["CODER_HTTP_ADDRESS"] = args.http_address
    if args.workers:
        env["WEB_CONCURRENCY"] = str(args.workers)
    try:  # gunicorn itself stops with a traceback on a WEB_CONCURRENCY that is no number
        serving_settings(env)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "gunicorn", "-c", "python:bridge.gunicorn_conf", "bridge.wsgi:app"]
    os.execve(sys.executable, command, env)
    return 0  # not reached
