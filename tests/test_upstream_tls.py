"""HTTPS upstreams: the gateway verifies the upstream's certificate against requests' CA bundle, or
the one SSL_CERT_FILE names (a corporate CA); an upstream it cannot verify is a 502, never an
unverified call."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx2 as httpx  # the transport the SDKs are built on
import openai
import pytest

from tests.conftest import OPENAI_KEY
from tests.fakeupstream import FakeUpstream
from tests.sdk_calls import call_openai, load_fixtures, openai_client

FIXTURE = dict(load_fixtures("openai_chat"))["openai_chat/simple_text"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def tls_upstream(certificate):
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    fake = FakeUpstream(tls=context).start()
    yield fake
    fake.stop()


def _env(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    # No CA setting inherited from the machine running the tests: only what a test names.
    no_ca = {"REQUESTS_CA_BUNDLE": "", "SSL_CERT_FILE": "", "SSL_CERT_DIR": ""}
    return {"CODER_AIBRIDGE_ENABLED": "true", "CODER_AIBRIDGE_OPENAI_KEY": OPENAI_KEY,
            "CODER_AIBRIDGE_OPENAI_BASE_URL": f"{upstream.url}/v1/", "CODER_AIBRIDGE_OPENAI_MAX_RETRIES": "0",
            **no_ca, **extra}


@pytest.mark.parametrize("ca_setting", ["REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
@pytest.mark.parametrize("stream", [False, True], ids=["blocking", "streaming"])
def test_a_verified_https_upstream_answers_as_it_does_directly(stream, ca_setting, start_gateway, tls_upstream, certificate,
                                                               identities):
    cert = str(certificate[0])
    gateway = start_gateway(_env(tls_upstream, **{ca_setting: cert}), workers=1)
    relayed = call_openai(openai_client(f"{gateway.base('openai')}/v1", identities.alice, "openai_chat/simple_text"),
                          FIXTURE["request"], stream)
    direct_client = openai.OpenAI(base_url=f"{tls_upstream.url}/v1", api_key=OPENAI_KEY, max_retries=0, timeout=30,
                                  default_headers={"X-Fixture": "openai_chat/simple_text"},
                                  http_client=httpx.Client(verify=ssl.create_default_context(cafile=cert)))
    assert relayed == call_openai(direct_client, FIXTURE["request"], stream)
    assert "error" not in relayed
    assert tls_upstream.requests[-2].headers.get("authorization") == f"Bearer {OPENAI_KEY}"  # the gateway's call


def test_an_upstream_certificate_the_gateway_cannot_verify_is_a_502(start_gateway, tls_upstream, identities):
    before = len(tls_upstream.requests)
    gateway = start_gateway(_env(tls_upstream), workers=1)  # the self-signed CA is in no default bundle
    client = openai_client(f"{gateway.base('openai')}/v1", identities.alice, "openai_chat/simple_text")
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(**FIXTURE["request"])
    assert raised.value.status_code == 502
    assert "TLS error" in str(raised.value)
    assert len(tls_upstream.requests) == before  # nothing was sent over the unverified connection
