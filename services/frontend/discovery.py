"""Finding a backend's addresses: a static list, the A records of one DNS name, or a targets file.

- `host:port,host:port`: fixed.
- `dns:///name:port`: the name's A records, sorted. In Kubernetes the name is a headless Service over
  the StatefulSet or Deployment: one record per ready pod, so pods that join or leave show up at the
  next resolution.
- `file:///path`: one `host:port` per line (`#` starts a comment), read again at every resolution: the
  launcher's pool on loopback ports, where every member has its own port and DNS cannot say so.

The frontend resolves its discovered targets again every `discovery_interval_s`.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from coded_invnet.serving.errors import Unavailable

DNS_SCHEME = "dns:///"
FILE_SCHEME = "file://"


def is_discovered(targets: Sequence[str]) -> bool:
    """Whether `targets` names a source to resolve again (DNS or a file), not a fixed list."""
    return len(targets) == 1 and targets[0].startswith((DNS_SCHEME, FILE_SCHEME))


def resolve(targets: Sequence[str]) -> list[str]:
    """Every address `targets` stands for now; raise Unavailable when it cannot be resolved."""
    if not is_discovered(targets):
        return list(targets)
    (target,) = targets
    if target.startswith(FILE_SCHEME):
        path = Path(target.removeprefix(FILE_SCHEME))
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise Unavailable(f"cannot read the targets file {str(path)!r}: {exc}") from None
        return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    host, _, port = target.removeprefix(DNS_SCHEME).rpartition(":")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError) as exc:
        raise Unavailable(f"cannot resolve {target!r}: {exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


def resolve_workers(targets: Sequence[str], k: int) -> list[str]:
    """The fixed layout's k data-worker slots: the first k addresses, in order (sorted for DNS, so that
    every frontend replica deals batch j to the same worker)."""
    found = resolve(targets)
    if len(found) < k:
        raise Unavailable(f"found {len(found)} data workers ({', '.join(found) or 'none'}); k={k} needed")
    return found[:k]


def write_targets(path: Path, targets: Sequence[str]) -> None:
    """Replace a targets file at once (a reader never sees it half written)."""
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text("".join(f"{t}\n" for t in targets))
    partial.replace(path)
