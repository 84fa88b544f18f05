"""The advertised URL: the address a replica's peers route to (D17), never a bind wildcard."""

from __future__ import annotations

import socket

import pytest

from taskstream.errors import ConfigError
from taskstream.processors.live.app import build_faust_app
from taskstream.settings import advertised_url, load_settings

POD = "http://processor-1.processor.taskstream.svc.cluster.local:6066"


def test_advertised_url_wins_over_the_bind_address() -> None:
    settings = load_settings(web_host="0.0.0.0", web_port=6066, advertised_url=POD + "/")
    assert advertised_url(settings) == POD  # a trailing slash is dropped
    assert str(build_faust_app(settings).conf.canonical_url) == POD


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_a_wildcard_bind_advertises_the_hostname(host: str) -> None:
    settings = load_settings(web_host=host, web_port=7001)
    assert advertised_url(settings) == f"http://{socket.gethostname()}:7001"


def test_a_concrete_bind_address_is_advertised_as_is() -> None:
    assert advertised_url(load_settings(web_host="127.0.0.1", web_port=7002)) == \
        "http://127.0.0.1:7002"
    assert advertised_url(load_settings(web_host="::1", web_port=7003)) == "http://[::1]:7003"


def test_advertised_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSTREAM_ADVERTISED_URL", POD)
    assert advertised_url(load_settings()) == POD


@pytest.mark.parametrize("bad", ["processor-1:6066", "http://processor-1", "ftp://p:1",
                                 "http://p:6066/api", "http://p q:6066"])
def test_an_advertised_url_that_peers_cannot_use_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="advertised_url"):
        load_settings(advertised_url=bad)
