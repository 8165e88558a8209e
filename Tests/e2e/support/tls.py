"""TLS for end-to-end tests (SPEC §12): a private CA and a server certificate for 127.0.0.1 and
localhost made with `cryptography`, PEM files on disk, and a broker served over HTTPS / wss://
(`TLSBroker`, a `Broker` whose URLs and HTTP client use TLS and trust that CA)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.broker import Broker, BrokerFactory
from support.ws import WS


@dataclass
class TLSFiles:
    ca: Path  # the CA certificate (what clients trust)
    cert: Path  # the server's certificate (BUS_TLS_CERT_FILE)
    key: Path  # the server's private key (BUS_TLS_KEY_FILE)

    def context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA and checks the host name."""
        return ssl.create_default_context(cafile=str(self.ca))


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_tls_files(directory: Path, hosts=("localhost",), ips=("127.0.0.1",)) -> TLSFiles:
    """A self-signed CA and a server certificate it signed, valid now for an hour either way."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "StreamBroker e2e CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(h) for h in hosts] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else ips[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(_pem_key(key))
    return files


class TLSBroker(Broker):
    """A broker started with BUS_TLS_CERT_FILE / BUS_TLS_KEY_FILE: https:// and wss:// URLs,
    HTTP and WebSocket clients that trust the test's CA."""

    def __init__(self, data_dir: Path, files: TLSFiles, env_overrides: dict | None = None, host: str = "127.0.0.1"):
        env = {"BUS_TLS_CERT_FILE": str(files.cert), "BUS_TLS_KEY_FILE": str(files.key)}
        env.update(env_overrides or {})
        super().__init__(data_dir, env)
        self.files = files
        # How the helpers name it: a certificate without 127.0.0.1 needs the host name.
        self.host = host
        self.ssl_context = files.context()
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.ssl_context)
        )

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://{self.host}:{self.port}/ws"

    @property
    def plain_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http_raw(self, method, path, data=None, headers=None, timeout=5.0):
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def ws(self) -> WS:
        client = WS(self.ws_url, ssl=self.ssl_context)
        self._clients.append(client)
        return client


def start_tls_broker(factory: BrokerFactory, tmp_path_factory, files: TLSFiles, host: str = "127.0.0.1", **env) -> TLSBroker:
    """A started TLS broker, stopped with the factory's other brokers; `host` is how the test's
    helpers name it (the certificate must name it)."""
    broker = TLSBroker(tmp_path_factory.mktemp("tlsbroker"), files, env, host=host)
    factory.brokers.append(broker)
    broker.start()
    return broker
