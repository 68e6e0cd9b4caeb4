"""Which addresses HTTP sources may reach (embedding.fetch.netpolicy); no name is resolved for real."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch import netpolicy
from embedding.fetch.netpolicy import address_problem, checked_endpoints, parse_networks

PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
NOT_PUBLIC = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "fc00::1": "private",
    "224.0.0.251": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "240.0.0.1": "reserved",
    "100.64.0.1": "not globally routable",
    "192.0.2.1": "private",
    "::ffff:10.0.0.1": "private",
    "2002:a9fe:a9fe::1": "link-local",  # 6to4 around 169.254.169.254
}


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", list(NOT_PUBLIC))
def test_other_addresses_are_refused_by_kind(address: str) -> None:
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None and NOT_PUBLIC[address] in problem


def test_allowed_networks_open_ranges_for_both_forms() -> None:
    allowed = parse_networks(["10.0.0.0/8", "127.0.0.1/32"])
    assert address_problem(ipaddress.ip_address("10.2.3.4"), allowed) is None
    assert address_problem(ipaddress.ip_address("::ffff:10.2.3.4"), allowed) is None
    assert address_problem(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert "loopback" in address_problem(ipaddress.ip_address("127.0.0.2"), allowed)


def test_endpoints_keep_only_allowed_addresses_of_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"mixed.example": [(socket.AF_INET, ("10.0.0.1", 80)), (socket.AF_INET, ("93.184.216.34", 80))]}
    monkeypatch.setattr(netpolicy, "resolve", lambda host, port: answers[host])
    endpoints = checked_endpoints("mixed.example", 80, ())
    assert [str(e.address) for e in endpoints] == ["93.184.216.34"]
    assert endpoints[0].sockaddr == ("93.184.216.34", 80)


def test_a_literal_is_never_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_lookup(host: str, port: int):
        raise AssertionError("resolved a literal")

    monkeypatch.setattr(netpolicy, "resolve", no_lookup)
    assert checked_endpoints("93.184.216.34", 443, ())[0].family == socket.AF_INET
    assert checked_endpoints("2606:4700:4700::1111", 443, ())[0].family == socket.AF_INET6
    with pytest.raises(EmbeddingError) as info:
        checked_endpoints("169.254.169.254", 80, ())
    assert info.value.code == ErrorCode.INVALID_MANIFEST_ROW and "link-local" in info.value.message


def test_a_name_that_does_not_resolve_is_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    def nothing(host: str, port: int):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(netpolicy, "resolve", nothing)
    with pytest.raises(EmbeddingError) as info:
        checked_endpoints("absent.example", 80, ())
    assert info.value.code == ErrorCode.NOT_FOUND
