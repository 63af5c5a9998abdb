"""Throwaway certificates for local TLS runs and tests, made with the `openssl` command: a CA, a server
certificate for loopback (127.0.0.1, localhost) and a client certificate for mutual TLS.

    certificates = make_certificates(Path(tmp))  # PEM files in tmp; the keys never leave it
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DAYS_VALID = 2  # long enough for a run, short enough that a leaked file soon means nothing
CA_NAME = "coded-invnet local CA"
CLIENT_NAME = "coded-invnet client"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
# One config for every openssl call, so the machine's own openssl.cnf changes nothing.
OPENSSL_CONFIG = """\
[req]
distinguished_name = subject
prompt = no
[subject]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = {names}
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
"""


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA that signed both certificates (its key is deleted), the server's pair and the
    client's pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certificates(folder: Path, server_names: Sequence[str] = LOOPBACK_NAMES) -> Certificates:
    """A fresh CA, a server certificate for `server_names` (IP addresses or DNS names) and a client
    certificate, written into `folder` (private keys readable by the owner only)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("making TLS certificates needs the openssl command")
    folder.mkdir(parents=True, exist_ok=True)
    names = ", ".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in server_names)
    config = folder / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG.format(names=names))

    def run(*args: str) -> None:
        result = subprocess.run([openssl, *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")

    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc", "-config", str(config)]
    days = ["-days", str(DAYS_VALID)]
    run("req", "-x509", *new_key, *days, "-extensions", "ca", "-subj", f"/CN={CA_NAME}",
        "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip

    def signed(name: str, subject: str) -> tuple[Path, Path]:
        """A key and a certificate for it signed by the CA, with the extensions of section `name`."""
        cert, key, request = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
        run("req", "-new", *new_key, "-subj", f"/CN={subject}", "-keyout", str(key), "-out", str(request))
        run("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            *days, "-extfile", str(config), "-extensions", name, "-out", str(cert))  # fmt: skip
        request.unlink()
        return cert, key

    server_cert, server_key = signed("server", server_names[0])
    client_cert, client_key = signed("client", CLIENT_NAME)
    for key in (server_key, client_key):
        key.chmod(0o600)
    # nothing is signed later: the CA's key goes, so these files cannot vouch for anything else
    ca_key.unlink()
    (folder / "ca.srl").unlink()
    return Certificates(ca, server_cert, server_key, client_cert, client_key)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
