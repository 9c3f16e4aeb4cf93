"""TLS files re-read on change (extender.tls.ReloadingContext): the HTTPS listeners' SSLContext and the gRPC
server's certificate configuration share the one mechanism."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from flexinfer.extender import tls
from flexinfer.extender.tls import RELOAD_CHECK_S, ReloadingContext, TlsFiles

from .certs import CA
from .ext_fixtures import Clock


def _files(tmp_path: Path) -> TlsFiles:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("cert v1")
    key.write_text("key v1")
    return TlsFiles(str(cert), str(key))


def _touch(path: str | None, text: str, bump_s: float) -> None:
    assert path is not None
    Path(path).write_text(text)
    st = os.stat(path)
    os.utime(path, (st.st_atime, st.st_mtime + bump_s))


def test_rebuilds_only_after_a_change_and_the_check_interval(tmp_path: Path) -> None:
    files, clock = _files(tmp_path), Clock(1000.0)
    built: list[str] = []

    def build(f: TlsFiles) -> str:
        text = Path(f.cert or "").read_text()
        built.append(text)
        return text

    r = ReloadingContext(files, build=build, clock=clock)
    assert r.get() == "cert v1" and built == ["cert v1"]
    clock.t += RELOAD_CHECK_S
    assert r.refresh() is False and built == ["cert v1"]  # nothing changed: not rebuilt
    _touch(files.cert, "cert v2", 5)
    clock.t += RELOAD_CHECK_S / 2
    assert r.get() == "cert v1" and built == ["cert v1"]  # changed, but checked too recently
    clock.t += RELOAD_CHECK_S
    assert r.refresh() is True and r.current == "cert v2" and built == ["cert v1", "cert v2"]
    assert r.refresh() is False and r.get() == "cert v2"


def test_a_failed_rebuild_keeps_the_old_one_and_retries_on_the_next_change(tmp_path: Path) -> None:
    files, clock = _files(tmp_path), Clock(1000.0)
    fail = [False]

    def build(f: TlsFiles) -> str:
        if fail[0]:
            raise ssl.SSLError("half-written")
        return Path(f.cert or "").read_text()

    r = ReloadingContext(files, build=build, clock=clock)
    fail[0] = True
    _touch(files.cert, "cert v2", 5)
    clock.t += RELOAD_CHECK_S
    assert r.refresh() is False and r.get() == "cert v1"
    fail[0] = False
    _touch(files.key, "key v2", 5)
    clock.t += RELOAD_CHECK_S
    assert r.refresh() is True and r.get() == "cert v2"


def test_server_context_follows_a_rotated_certificate(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    first, second = ca.issue("one", server=True), ca.issue("two", server=True)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(Path(first.cert).read_bytes())
    key.write_bytes(Path(first.key).read_bytes())
    clock = Clock(1000.0)
    r = ReloadingContext(TlsFiles(str(cert), str(key), ca.path.as_posix()), clock=clock)
    ctx = r.get()
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    cert.write_bytes(Path(second.cert).read_bytes())
    _touch(str(key), Path(second.key).read_text(), 5)
    clock.t += RELOAD_CHECK_S
    assert r.get() is not ctx and r.get().verify_mode == ssl.CERT_REQUIRED


def test_grpc_credentials_build_from_the_files(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    pair = ca.issue("server", server=True)
    creds = tls.grpc_server_credentials(TlsFiles(pair.cert, pair.key, pair.ca))
    assert creds is not None
