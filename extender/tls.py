"""TLS for the extender: server contexts (mutual TLS when a client CA is given), the client context a
replica uses to forward to the leader, and the matching gRPC credentials.

Who may call what (docs/hardening.md, extender/README.md "Who can reserve"):
* `--tls-cert/--tls-key` serve HTTPS and gRPC over TLS; `--client-ca-file` additionally REQUIRES every
  client of those ports to present a certificate signed by that CA (kube-scheduler's `tlsConfig.certFile/
  keyFile`; the other replicas use their own serving certificate, which carries the clientAuth usage). The
  handshake fails without one, so an unauthenticated caller never reaches a handler, let alone a reservation.
* Use a CA of its own for this (the manifests' Secret or the cert-manager component), never the cluster CA:
  every certificate the CA signed may reserve GPU memory.

Files are re-read when they change (a rotated Secret, cert-manager renewing): checked at most every
`RELOAD_CHECK_S` seconds, on new connections; established connections keep the old certificate.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from flexinfer import logs
from flexinfer.errors import ParseError

log = logs.get("flexinfer.extender.tls")

RELOAD_CHECK_S = 10.0


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Paths of the serving certificate/key and of the CA that client certificates must chain to."""

    cert: str | None = None
    key: str | None = None
    client_ca: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert and self.key)

    @property
    def mutual(self) -> bool:
        return self.enabled and bool(self.client_ca)

    def check(self) -> TlsFiles:
        if bool(self.cert) != bool(self.key):
            raise ParseError("TLS options", (self.cert, self.key), "both --tls-cert and --tls-key, or neither")
        if self.client_ca and not self.enabled:
            raise ParseError("--client-ca-file", self.client_ca,
                             "--tls-cert and --tls-key as well (client certificates are checked inside TLS)")
        for path in (self.cert, self.key, self.client_ca):
            if path and not Path(path).is_file():
                raise ParseError("TLS file", path, "a readable file")
        return self

    def _mtimes(self) -> tuple[float, ...]:
        out = []
        for path in (self.cert, self.key, self.client_ca):
            try:
                out.append(os.stat(path).st_mtime if path else 0.0)
            except OSError:
                out.append(-1.0)
        return tuple(out)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """TLS 1.2+ server context; with a client CA, a client certificate is required and verified."""
    assert files.cert and files.key
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    if files.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=files.client_ca)
    return ctx


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Context for a replica calling another one: verifies the peer against the client CA (one CA signs every
    certificate of this deployment) and presents the replica's own certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.client_ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.cert and files.key:
        ctx.load_cert_chain(files.cert, files.key)
    return ctx


class ReloadingContext:
    """A TLS configuration (an SSLContext by default) rebuilt when its files change. `get()` is cheap (one clock
    read) between checks; a rebuild that fails (a half-written rotation) keeps the old one."""

    def __init__(self, files: TlsFiles, build=server_context, clock=time.monotonic, what: str = "tls") -> None:
        self.files = files
        self._build = build
        self._clock = clock
        self._what = what
        self._lock = threading.Lock()
        self._mtimes = files._mtimes()
        self._ctx = build(files)
        self._checked = clock()

    @property
    def current(self):
        return self._ctx

    def refresh(self) -> bool:
        """Rebuild if the files changed (checked at most every RELOAD_CHECK_S); True when a new one was built."""
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_S:
            return False
        with self._lock:
            if now - self._checked < RELOAD_CHECK_S:
                return False
            self._checked = now
            mtimes = self.files._mtimes()
            if mtimes == self._mtimes:
                return False
            try:
                self._ctx = self._build(self.files)
            except (OSError, ssl.SSLError) as e:  # half-written rotation: keep serving the old one
                log.warning(f"extender_{self._what}_reload_failed", error=str(e))
                return False
            self._mtimes = mtimes
            log.info(f"extender_{self._what}_reloaded", cert=self.files.cert, client_ca=self.files.client_ca)
            return True

    def get(self) -> ssl.SSLContext:
        self.refresh()
        return self._ctx


def grpc_server_credentials(files: TlsFiles):  # -> grpc.ServerCredentials
    """gRPC server credentials that re-read the files on change; client certificates required with a CA."""
    import grpc

    def config(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
        assert files.cert and files.key
        ca = Path(files.client_ca).read_bytes() if files.client_ca else None
        return grpc.ssl_server_certificate_configuration(
            [(Path(files.key).read_bytes(), Path(files.cert).read_bytes())], root_certificates=ca)

    reloading = ReloadingContext(files, build=config, what="grpc_tls")

    def fetch() -> grpc.ServerCertificateConfiguration | None:  # called by gRPC per handshake
        return reloading.current if reloading.refresh() else None

    return grpc.dynamic_ssl_server_credentials(reloading.current, fetch, require_client_authentication=files.mutual)


def grpc_channel_credentials(files: TlsFiles):  # -> grpc.ChannelCredentials
    import grpc

    ca = Path(files.client_ca).read_bytes() if files.client_ca else None
    key = Path(files.key).read_bytes() if files.key else None
    cert = Path(files.cert).read_bytes() if files.cert else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
