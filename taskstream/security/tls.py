"""TLS contexts of the HTTP API: the server's, and the clients' that reach it (D29).

A replica serves HTTPS with ``api_tls_cert`` / ``api_tls_key``; clients (the
SDK's result waits, the CLI, peer replicas proxying a request) check its
certificate against ``api_ca_file`` (or the system's CAs). A bearer token is
sent over plain HTTP only to a loopback address (:func:`may_send_token`).
"""

from __future__ import annotations

import ipaddress
import ssl
from urllib.parse import urlsplit

from taskstream.errors import ConfigError
from taskstream.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost"})


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The API's server context (TLS 1.2+), None when it serves plain HTTP."""
    if settings.api_tls_cert is None or settings.api_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.api_tls_cert, settings.api_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"api_tls_cert/api_tls_key: cannot load {settings.api_tls_cert} "
                          f"with {settings.api_tls_key}: {exc}") from None
    return context


def client_context(settings: Settings) -> ssl.SSLContext:
    """What a client of the API checks its certificate with (``api_ca_file`` or the
    system's CAs); host names are checked."""
    cafile = settings.api_ca_file
    if cafile is not None and not cafile.is_file():
        raise ConfigError(f"api_ca_file: {cafile} is not a readable file "
                          "(TASKSTREAM_API_CA_FILE)")
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                      cafile=str(cafile) if cafile is not None else None)


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def may_send_token(url: str) -> bool:
    """True when a bearer token may go to ``url``: over HTTPS, or plain HTTP to loopback."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or ""))
