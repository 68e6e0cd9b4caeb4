"""What a manifest may name, and where HTTP may go (issue 11).

No test here connects outside 127.0.0.0/8 or resolves a real name: every connection passes a recording
guard that fails on any other address, and host names go through a planted resolver that knows only the
names the test gives it.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import ClassVar

import pytest

from embedding.config import Config, FetchConfig
from embedding.errors import EmbeddingError, ErrorCode
from embedding.fetch import http as httpget
from embedding.fetch import netpolicy
from embedding.fetch.sources import fetch
from embedding.fetch.uripolicy import SourceSettings, check_inline, resolve_uri
from tests import images_factory as f
from tests.support.http_server import ImageServer

IMAGE = f.sample_file(1)
LOOPBACK = ["127.0.0.1/32"]
ALL = ("file", "s3", "gs", "http", "https", "inline")


def policy(**inp) -> SourceSettings:
    return SourceSettings.from_config(Config.model_validate({"input": inp}))


def refused(uri: object, folder: str | None, settings: SourceSettings, rule: str) -> str:
    with pytest.raises(EmbeddingError) as info:
        resolve_uri(uri, folder, settings)
    assert info.value.code == ErrorCode.INVALID_MANIFEST_ROW
    assert info.value.message.startswith(rule), info.value.message
    return info.value.message


REMOTE_FOLDERS = [
    "s3://bucket/set",
    "gs://bucket/set",
    "https://images.example/set",
    "http://127.0.0.1:9/set",
]
HOSTILE_ROWS = {
    "/etc/hostname": "local-file rule",
    "file:///etc/hostname": "local-file rule",
    "FILE:///etc/hostname": "local-file rule",
    "file://localhost/etc/hostname": "local-file rule",
    "../x.jpg": "folder rule",
    "images/../../x.jpg": "folder rule",
    "%2e%2e/x.jpg": "folder rule",
    "..\\x.jpg": "folder rule",
}


@pytest.mark.parametrize("folder", REMOTE_FOLDERS)
@pytest.mark.parametrize("row", list(HOSTILE_ROWS))
def test_a_remote_manifest_cannot_name_local_files_or_leave_its_folder(folder: str, row: str) -> None:
    refused(row, folder, policy(), HOSTILE_ROWS[row])


@pytest.mark.parametrize("folder", REMOTE_FOLDERS)
def test_a_remote_manifest_names_remote_images(folder: str) -> None:
    s = policy()
    assert resolve_uri("images/a.jpg", folder, s) == f"{folder}/images/a.jpg"
    assert resolve_uri("images/./b/../a.jpg", folder, s).startswith(folder)  # stays inside: fine
    assert resolve_uri("s3://other/x.jpg", folder, s) == "s3://other/x.jpg"
    assert resolve_uri("https://cdn.example/x.jpg", folder, s) == "https://cdn.example/x.jpg"


def test_local_files_from_a_remote_manifest_can_be_opened_by_the_config() -> None:
    s = policy(allow_local_from_remote_manifest=True)
    assert resolve_uri("/etc/hostname", "s3://bucket/set", s) == "/etc/hostname"
    refused("../x.jpg", "s3://bucket/set", s, "folder rule")  # still confined to its folder


def test_a_local_manifest_may_name_local_files_anywhere() -> None:
    s = policy()
    assert resolve_uri("/etc/hostname", "/data/set", s) == "/etc/hostname"
    assert resolve_uri("file:///etc/hostname", "/data/set", s) == "file:///etc/hostname"
    assert resolve_uri("../x.jpg", "/data/set", s) == "/data/x.jpg"
    assert resolve_uri("a.jpg", None, s) == "a.jpg"  # the API's own caller, relative to its directory


def test_untrusted_sources_name_no_local_files_at_all() -> None:
    s = SourceSettings.untrusted(Config())
    assert "file" not in s.allowed_schemes and not s.allow_local
    refused("/etc/hostname", None, s, "scheme rule")
    with pytest.raises(EmbeddingError) as info:
        fetch("/etc/hostname", SourceSettings(ALL, 1000, FetchConfig(), allow_local=False))
    assert info.value.message.startswith("local-file rule")


def test_other_refusals_name_their_rule_and_hide_credentials() -> None:
    s = policy()
    message = refused("ftp://user:hunter22@files.example/x.jpg", None, s, "scheme rule")
    assert "hunter22" not in message and "user" not in message
    refused("data:image/png;base64,AAAA", None, s, "scheme rule")
    refused("file://fileserver/share/x.jpg", None, s, "local-file rule")
    for value in (42, None, b"/etc/hostname", ["a"]):
        refused(value, "/data", s, "uri rule")
    refused("  ", "/data", s, "uri rule")
    message = refused("../x.jpg", "https://reader:hunter22@data.example/set", s, "folder rule")
    assert "hunter22" not in message


def test_inline_bytes_obey_the_allowed_schemes() -> None:
    check_inline(policy())
    with pytest.raises(EmbeddingError) as info:
        check_inline(policy(allowed_schemes=["s3", "https"]))
    assert info.value.code == ErrorCode.INVALID_MANIFEST_ROW and info.value.message.startswith("inline rule")


# --- HTTP: addresses, redirects, credentials ------------------------------------------------------


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch):
    """Records every connection (refusing any outside 127/8) and plants the resolver: `net.names`."""

    class Net:
        names: ClassVar[dict[str, list[str]]] = {}
        connected: ClassVar[list[str]] = []

    real_tcp = httpget._PinnedHTTPConnection._tcp

    def guarded_tcp(self):
        for endpoint in self._endpoints:
            assert endpoint.address in ipaddress.ip_network("127.0.0.0/8"), endpoint
        Net.connected.append(f"{self.host}:{self.port}")
        return real_tcp(self)

    def planted_resolve(host: str, port: int):
        if host not in Net.names:
            raise AssertionError(f"unexpected name lookup: {host}")
        out = []
        for address in Net.names[host]:
            ip = ipaddress.ip_address(address)
            out.append((10, (address, port, 0, 0)) if ip.version == 6 else (2, (address, port)))
        return out

    monkeypatch.setattr(httpget._PinnedHTTPConnection, "_tcp", guarded_tcp)
    monkeypatch.setattr(netpolicy, "resolve", planted_resolve)
    return Net


@pytest.fixture
def server():
    srv = ImageServer({"a.jpg": IMAGE}).start()
    yield srv
    srv.stop()


@pytest.fixture
def other_host():
    """A second server on 127.0.0.2: reachable, but refused by a config that opens 127.0.0.1/32 only."""
    srv = ImageServer({"a.jpg": IMAGE}, host="127.0.0.2").start()
    yield srv
    srv.stop()


def http(networks: list[str] | None = None, retries: int = 2, **fetch_cfg) -> SourceSettings:
    cfg = FetchConfig(
        timeout_s=2, retries=retries, backoff_s=0.05, allowed_networks=networks or [], **fetch_cfg
    )
    return SourceSettings(ALL, 1 << 20, cfg)


def expect(url: str, settings: SourceSettings, code: ErrorCode) -> EmbeddingError:
    with pytest.raises(EmbeddingError) as info:
        fetch(url, settings)
    assert info.value.code == code, info.value
    return info.value


@pytest.mark.parametrize(
    "host, kind",
    [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:169.254.169.254]", "link-local"),
        ("[64:ff9b::a9fe:a9fe]", "link-local"),  # NAT64 form of 169.254.169.254
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not globally routable"),
        ("[fe80::1]", "link-local"),
        ("[fc00::1]", "private"),
    ],
)
def test_non_public_addresses_are_refused_before_connecting(
    net, server: ImageServer, host: str, kind: str
) -> None:
    error = expect(f"http://{host}:{server.port}/img/a.jpg", http(), ErrorCode.INVALID_MANIFEST_ROW)
    assert error.message.startswith("network rule") and kind in error.message
    assert error.attempts == 1 and net.connected == [] and server.connections == 0


def test_names_are_checked_after_resolution_and_connected_as_resolved(net, server: ImageServer) -> None:
    net.names = {
        "metadata.example": ["169.254.169.254"],
        "images.example": ["127.0.0.1"],
        "mixed.example": ["10.0.0.7", "127.0.0.1"],
    }
    error = expect(f"http://metadata.example:{server.port}/x", http(LOOPBACK), ErrorCode.INVALID_MANIFEST_ROW)
    assert "169.254.169.254 is a link-local address" in error.message and net.connected == []
    data, attempts = fetch(f"http://images.example:{server.port}/img/a.jpg", http(LOOPBACK))
    assert data == IMAGE and attempts == 1
    # The system resolver cannot know images.example: the connection went to the address checked.
    assert server.headers[-1]["Host"] == f"images.example:{server.port}"
    assert fetch(f"http://mixed.example:{server.port}/img/a.jpg", http(LOOPBACK))[0] == IMAGE
    assert server.connections == 2


def test_an_opened_network_works_and_its_redirects_are_checked_again(
    net, server: ImageServer, other_host: ImageServer
) -> None:
    assert fetch(f"{server.url}/img/a.jpg", http(LOOPBACK)) == (IMAGE, 1)
    assert fetch(f"{other_host.url}/img/a.jpg", http(["127.0.0.0/8"]))[0] == IMAGE
    other_host.connections = 0
    hop = f"{server.url}/redirect?to={other_host.url}/img/a.jpg"
    error = expect(hop, http(LOOPBACK), ErrorCode.INVALID_MANIFEST_ROW)
    assert error.message.startswith("network rule") and "127.0.0.2 is a loopback address" in error.message
    assert other_host.connections == 0  # refused before connecting
    error = expect(
        f"{server.url}/redirect?to=file:///etc/hostname", http(LOOPBACK), ErrorCode.INVALID_MANIFEST_ROW
    )
    assert error.message.startswith("scheme rule") and "redirect" in error.message


def test_redirects_are_bounded(net, server: ImageServer) -> None:
    loop = f"{server.url}/loop"
    before = len(server.requests)
    error = expect(loop, http(LOOPBACK, max_redirects=3), ErrorCode.INVALID_MANIFEST_ROW)
    assert error.message.startswith("redirect rule")
    assert len(server.requests) - before == 4  # the URL and three redirects, no retries


def test_403_and_401_are_access_denied_and_not_retried(net, server: ImageServer) -> None:
    before = len(server.requests)
    assert expect(f"{server.url}/forbidden", http(LOOPBACK), ErrorCode.ACCESS_DENIED).attempts == 1
    assert expect(f"{server.url}/auth/a.jpg", http(LOOPBACK), ErrorCode.ACCESS_DENIED).attempts == 1
    assert len(server.requests) - before == 2


def test_user_info_authenticates_its_origin_only_and_never_shows(
    net, server: ImageServer, other_host: ImageServer
) -> None:
    server.auth = "Basic " + base64.b64encode(b"reader:p@ss word").decode()
    url = f"http://reader:p%40ss%20word@127.0.0.1:{server.port}"
    assert fetch(f"{url}/auth/a.jpg", http(LOOPBACK))[0] == IMAGE
    error = expect(f"{url}/missing", http(LOOPBACK), ErrorCode.NOT_FOUND)
    assert "reader" not in error.message and "p%40ss" not in error.message
    # A redirect to another origin carries no credentials there.
    assert fetch(f"{url}/redirect?to={other_host.url}/img/a.jpg", http(["127.0.0.0/8"]))[0] == IMAGE
    assert "Authorization" not in other_host.headers[-1]
    assert server.headers[-1]["Authorization"] == server.auth


def test_configured_headers_go_to_the_first_origin_only(
    net, server: ImageServer, other_host: ImageServer
) -> None:
    settings = SourceSettings(
        ALL,
        1 << 20,
        FetchConfig(timeout_s=2, retries=0, allowed_networks=["127.0.0.0/8"]),
        storage_options={"http": {"headers": {"X-Api-Key": "k-123"}}},
    )
    fetch(f"{server.url}/redirect?to={other_host.url}/img/a.jpg", settings)
    assert server.headers[-1]["X-Api-Key"] == "k-123"
    assert "X-Api-Key" not in other_host.headers[-1]


def test_the_api_follows_the_same_policy(net, server: ImageServer, tmp_path) -> None:
    """vectorize_image (and so `search --image`): the user's own path is fine, URLs obey the network
    rule, and a caller passing untrusted settings gets no local files."""
    from embedding.api import vectorize_image

    cfg = Config.model_validate({"inference": {"device": "cpu"}})
    with pytest.raises(EmbeddingError) as info:
        vectorize_image("http://169.254.169.254/latest/meta-data/x.jpg", cfg)
    assert info.value.message.startswith("network rule") and net.connected == []
    path = tmp_path / "mine.jpg"
    path.write_bytes(IMAGE)
    with pytest.raises(EmbeddingError) as info:
        vectorize_image(str(path), cfg, source=SourceSettings.untrusted(cfg))
    assert info.value.message.startswith("scheme rule")
    mine = vectorize_image(path, cfg)
    opened = Config.model_validate({"inference": {"device": "cpu"}, "fetch": {"allowed_networks": LOOPBACK}})
    served = vectorize_image(f"{server.url}/img/a.jpg", opened)
    assert float(mine.values @ served.values) > 0.9999  # the same bytes, the same vector


@pytest.fixture
def localhost_certificate(tmp_path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A self-signed certificate for the name "localhost" only, trusted through SSL_CERT_FILE."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    return str(cert_file), str(key_file)


def test_https_connects_to_the_checked_address_and_verifies_the_name(net, localhost_certificate) -> None:
    server = ImageServer({"a.jpg": IMAGE}, tls=localhost_certificate).start()
    try:
        net.names = {"localhost": ["127.0.0.1"]}
        assert fetch(f"https://localhost:{server.port}/img/a.jpg", http(LOOPBACK))[0] == IMAGE
        # The certificate names "localhost", not the address: verification is against the URL's name.
        url = f"https://127.0.0.1:{server.port}/img/a.jpg"
        error = expect(url, http(LOOPBACK, retries=0), ErrorCode.FETCH_FAILED)
        assert "certificate" in error.message.lower()
    finally:
        server.stop()
