"""Every service setting, read from `CODED_*` env vars or CLI flags, in one place.

`load_config(service, argv)` builds a frozen `ServingConfig` for one service, failing fast with a
message that names the bad setting. CLI flags override env vars, which override defaults.
`ENV_VARS[service]` lists the env vars each service reads (the Kubernetes manifests are checked
against it).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from coded_invnet.coding import CODING_MODES, MAX_PARITIES, CodingError, parity_coefficients
from coded_invnet.serving.errors import ConfigError

SERVICES = ("worker", "encoder", "decoder", "frontend")
DECODABLE_MODES = ("parm", "coded-invnet")  # the modes with a parity path (encoder, parity worker, decoder)
MULTI_PARITY_MODES = ("coded-invnet",)  # the modes whose groups may carry r > 1 parities
CODER_SERVICES = ("encoder", "decoder", "frontend")  # the services that know the code (k, r)
MODEL_SERVICES = ("worker", "encoder", "decoder")
WORKER = ("worker",)
FRONTEND = ("frontend",)
ROLES = ("data", "parity", "pool")  # pool: data and parity batches, chosen per batch
DEVICES = ("auto", "cpu", "cuda")
DELAY_KINDS = ("none", "fixed", "exponential")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Backends exchange groups of up to max_batch rows with the frontend; their messages may be large.
BACKEND_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_RPC_TIMEOUT_S = 10.0  # every call's deadline unless the caller sets one
# The largest input row of the data sets the project serves (CIFAR-10: 3 x 32 x 32 float32): the
# frontend's default message limit is what its per-client queue bound can take of such rows.
LARGEST_QUERY_BYTES = 3 * 32 * 32 * 4
MESSAGE_HEADROOM_BYTES = 64 * 1024  # request metadata, tensor names, protobuf framing
REQUESTS_IN_BUDGET = 16  # largest-size requests the frontend's default byte budget holds at once
SWITCH = ("off", "on")


@dataclass(frozen=True)
class ServingConfig:
    service: str = "worker"
    # every service
    host: str = "0.0.0.0"
    port: int = 8001
    metrics_port: int = 8002  # 0: any free port; -1: no metrics endpoint
    log_level: str = "INFO"
    shutdown_grace_s: float = 5.0
    max_message_bytes: int = 0  # 0: the service's default (see `message_limit`)
    mode: str = "coded-invnet"
    k: int = 10
    parities: int = 1  # r: parity batches per coding group in the coded modes (encoder, decoder, frontend)
    # TLS (every service; unset: plaintext). PEM files.
    tls_cert: Path | None = None  # this server's certificate chain; with tls_key, the port serves TLS only
    tls_key: Path | None = None
    tls_ca: Path | None = None  # verifies the servers this process calls and, for mTLS, its clients
    tls_require_client_cert: str = "off"  # "on": clients must present a certificate signed by tls_ca
    tls_client_cert: Path | None = None  # presented to the servers this process calls (mTLS)
    tls_client_key: Path | None = None
    tls_server_name: str = ""  # the name servers' certificates are checked for (default: the target's host)
    # worker, encoder, decoder
    model_dir: Path = Path("models/mnist")
    model_file: Path | None = None  # overrides the file chosen from mode/role/k
    device: str = "auto"
    ort_threads: int = 0  # 0: onnxruntime's default
    max_inflight: int = 4  # batches processed concurrently per stream
    # worker
    role: str = "data"
    fault_delay: str = "none"
    fault_delay_ms: float = 0.0
    fault_delay_probability: float = 0.0
    fault_failure_probability: float = 0.0
    fault_seed: int = 0
    fault_api: str = "off"  # "on": SetFaults/GetFaults answer on the serving port (tests, benchmarks)
    # frontend
    model_name: str = "mnist"  # the name clients infer with (Open Inference Protocol)
    workers: tuple[str, ...] = ()  # "host:port" list, or one "dns:///name:port" or "file:///path" target
    parity_worker: str = ""  # set: the fixed layout (k data slots + parity); empty: parity in the pool
    encoder: str = ""
    decoder: str = ""
    max_batch: int = 32
    max_delay_ms: float = 2.0
    straggler_timeout_ms: float = 50.0
    decode_wait_ms: float = 0.0  # once k of the k+1 results are in, wait this long for the last one
    parity_delay_ms: float = 0.0  # 0: the parity path starts with the data batches
    parity_delay_quantile: float = 0.9  # > 0: start it at this quantile of recent groups' latency
    max_queue: int = 4096
    max_queue_per_client: int = 256  # queued queries of one client (one connection, gRPC's peer)
    max_request_bytes_in_flight: int = 0  # 0: 16 messages of the largest size (see `request_bytes_budget`)
    # few groups in flight (each worker has a batch computing and one or two queued): under load the
    # queue then fills bigger batches, which cost workers less per query (measured: 2 groups of up to
    # 32 rows served 2888 q/s, 8 groups of up to 8 rows 2329 q/s; batches averaged 13.6 and 5.3 rows)
    max_inflight_groups: int = 3
    rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S
    discovery_interval_s: float = 5.0  # how often dns:/// and file:/// targets are resolved again

    @property
    def message_limit(self) -> int:
        """The largest gRPC message this service receives or sends: for the frontend what a client may
        queue at once (so a request that cannot be admitted is refused before it is read in full), for
        the backends room for a whole coding group."""
        if self.max_message_bytes:
            return self.max_message_bytes
        if self.service == "frontend":
            return self.max_queue_per_client * LARGEST_QUERY_BYTES + MESSAGE_HEADROOM_BYTES
        return BACKEND_MAX_MESSAGE_BYTES

    @property
    def request_bytes_budget(self) -> int:
        """The frontend's budget for the input bytes of the requests it holds at once (admitted, not yet
        answered): what keeps its memory bounded whatever the mix of request sizes."""
        return self.max_request_bytes_in_flight or REQUESTS_IN_BUDGET * self.message_limit

    def __post_init__(self) -> None:
        check_tls(self)
        check_parities(self)

    @property
    def group_parities(self) -> int:
        """The parity workers a group is placed on: r in the coded modes, none otherwise."""
        return self.parities if self.mode in DECODABLE_MODES else 0

    def model_path(self) -> Path:
        """The ONNX file this service runs (see docs/CONTRACTS.md)."""
        if self.model_file is not None:
            return self.model_file
        return self.model_dir / default_model_file(self.service, self.mode, self.role, self.k, self.parities)


def check_tls(cfg: ServingConfig) -> None:
    """The TLS settings that only work together: a key with its certificate, client certificates
    checked against a CA."""
    for cert, key in (("tls_cert", "tls_key"), ("tls_client_cert", "tls_client_key")):
        if (getattr(cfg, cert) is None) != (getattr(cfg, key) is None):
            raise ConfigError(f"{env_var(cert)} and {env_var(key)} come together: set both or neither")
    if cfg.tls_require_client_cert == "on" and (cfg.tls_cert is None or cfg.tls_ca is None):
        raise ConfigError(
            "CODED_TLS_REQUIRE_CLIENT_CERT=on needs CODED_TLS_CERT/CODED_TLS_KEY (a TLS port) and "
            "CODED_TLS_CA (the CA client certificates must chain to)"
        )
    if cfg.tls_client_cert is not None and cfg.tls_ca is None:
        raise ConfigError("CODED_TLS_CLIENT_CERT needs CODED_TLS_CA to verify the servers it is presented to")


def check_parities(cfg: ServingConfig) -> None:
    """r > 1 parities only where the code has them: coded-invnet (ParM is a one-parity code), and a
    (k, r) with coefficients (`coding.parity_coefficients`)."""
    if cfg.parities == 1:
        return
    if cfg.mode not in MULTI_PARITY_MODES:
        raise ConfigError(
            f"CODED_PARITIES={cfg.parities}: r > 1 parities need CODED_MODE in {MULTI_PARITY_MODES}, "
            f"not {cfg.mode!r} (ParM has one parity)"
        )
    try:
        parity_coefficients(cfg.k, cfg.parities)
    except CodingError as error:
        raise ConfigError(f"CODED_PARITIES={cfg.parities} with CODED_K={cfg.k}: {error}") from None


def require_decodable_mode(cfg: ServingConfig) -> None:
    if cfg.mode not in DECODABLE_MODES:
        raise ConfigError(f"CODED_MODE={cfg.mode!r}: the {cfg.service} needs one of {DECODABLE_MODES}")


def default_model_file(service: str, mode: str, role: str, k: int, parities: int = 1) -> str:
    if service == "worker":
        return f"parm_k{k}.onnx" if (mode, role) == ("parm", "parity") else "worker.onnx"  # pool: data
    if service == "encoder":
        if mode == "parm":
            return f"parm_encoder_k{k}.onnx"
        return f"encoder_k{k}.onnx" if parities == 1 else f"encoder_k{k}_r{parities}.onnx"
    if service == "decoder":
        return "head.onnx"
    raise ConfigError(f"service {service!r} runs no model")


def env_var(field: str) -> str:
    return "CODED_" + field.upper()


@dataclass(frozen=True)
class Setting:
    field: str
    parse: Callable[[str], Any]
    help: str
    services: tuple[str, ...] = SERVICES
    choices: tuple[str, ...] = ()
    check: Callable[[Any], bool] = lambda _: True
    requirement: str = ""

    @property
    def env_var(self) -> str:
        return env_var(self.field)

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _pem_file(name: str, help: str, services: tuple[str, ...] = SERVICES) -> Setting:
    return Setting(name, Path, help, services, check=Path.is_file, requirement="an existing file")


def _probability(name: str, help: str) -> Setting:
    return Setting(name, float, help, WORKER, check=lambda p: 0 <= p <= 1, requirement="in [0, 1]")


def _frontend(name: str, parse: Callable[[str], Any], help: str, check: Callable[[Any], bool]) -> Setting:
    return Setting(name, parse, help, FRONTEND, check=check)


def _positive(value: float) -> bool:
    return value > 0


def _non_negative(value: float) -> bool:
    return value >= 0


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "address to bind"),
    Setting("port", int, "gRPC port (0: any free)", check=lambda p: 0 <= p < 65536, requirement="a port"),
    Setting(
        "metrics_port",
        int,
        "Prometheus port (0: any free port, -1: off)",
        check=lambda p: -1 <= p < 65536,
        requirement="a port or -1",
    ),
    Setting("log_level", str.upper, "log level", choices=LOG_LEVELS),
    Setting("shutdown_grace_s", float, "seconds in-flight RPCs get on SIGTERM", check=_non_negative),
    Setting(
        "max_message_bytes",
        int,
        "largest gRPC message accepted or sent (0: the frontend's from its per-client bound, 64 MiB else)",
        check=_non_negative,
    ),
    Setting("mode", str, "coding mode", choices=CODING_MODES),
    Setting("k", int, "data batches per coding group", check=lambda k: k >= 2, requirement=">= 2"),
    Setting(
        "parities",
        int,
        "parity batches per coding group (r; r > 1: coded-invnet only, the pool holds >= k + r workers)",
        CODER_SERVICES,
        check=lambda r: 1 <= r <= MAX_PARITIES,
        requirement=f"in 1..{MAX_PARITIES}",
    ),
    _pem_file("tls_cert", "server certificate chain (PEM); with --tls-key the port serves TLS only"),
    _pem_file("tls_key", "server private key (PEM)"),
    _pem_file("tls_ca", "CA bundle (PEM) that verifies the servers this process calls, and its clients"),
    Setting(
        "tls_require_client_cert",
        str,
        "mutual TLS: refuse clients without a certificate signed by --tls-ca",
        choices=SWITCH,
    ),
    _pem_file("tls_client_cert", "client certificate (PEM) presented to the servers this process calls"),
    _pem_file("tls_client_key", "client private key (PEM)"),
    Setting("tls_server_name", str, "name the called servers' certificates must carry (default: their host)"),
    Setting("model_dir", Path, "folder of the ONNX models", MODEL_SERVICES),
    Setting("model_file", Path, "explicit ONNX file (overrides model_dir/mode/role/k)", MODEL_SERVICES),
    Setting("device", str, "execution provider", MODEL_SERVICES, choices=DEVICES),
    Setting("ort_threads", int, "onnxruntime threads (0: auto)", MODEL_SERVICES, check=_non_negative),
    Setting("max_inflight", int, "batches in flight per stream", MODEL_SERVICES, check=_positive),
    Setting("role", str, "worker role", WORKER, choices=ROLES),
    Setting("fault_delay", str, "injected delay distribution", WORKER, choices=DELAY_KINDS),
    Setting("fault_delay_ms", float, "fixed delay, or exponential mean", WORKER, check=_non_negative),
    _probability("fault_delay_probability", "chance a batch is delayed (0 with a delay set: always)"),
    _probability("fault_failure_probability", "chance a batch fails with UNAVAILABLE"),
    Setting("fault_seed", int, "fault injection seed (0: unseeded)", WORKER, check=_non_negative),
    Setting(
        "fault_api",
        str,
        "answer the SetFaults/GetFaults admin RPCs (off: PERMISSION_DENIED; static faults still apply)",
        WORKER,
        choices=SWITCH,
    ),
    Setting("model_name", str, "model name clients ask for", FRONTEND),
    Setting(
        "workers",
        _csv,
        "worker targets: host:port list, or one dns:///name:port or file:///path (re-resolved)",
        FRONTEND,
    ),
    Setting(
        "parity_worker",
        str,
        "parity worker target (fixed layout; empty: parity batches go to the pool)",
        FRONTEND,
    ),
    Setting("encoder", str, "encoder target(s): host:port, dns:///name:port or file:///path", FRONTEND),
    Setting("decoder", str, "decoder target(s): host:port, dns:///name:port or file:///path", FRONTEND),
    Setting("max_batch", int, "queries per data batch (B)", FRONTEND, check=_positive),
    Setting("max_delay_ms", float, "longest wait while filling a group", FRONTEND, check=_non_negative),
    _frontend("straggler_timeout_ms", float, "wait before re-sending (or decoding) a batch", _positive),
    _frontend(
        "decode_wait_ms",
        float,
        "once k of the k+1 results are in, wait this long for the last before decoding it (0: at once)",
        _non_negative,
    ),
    _frontend(
        "parity_delay_ms",
        float,
        "start the parity path this late unless a batch fails first (0: at once)",
        _non_negative,
    ),
    Setting(
        "parity_delay_quantile",
        float,
        "start the parity path at this quantile of recent fault-free groups' latency (0: off)",
        FRONTEND,
        check=lambda q: 0 <= q < 1,
        requirement="in [0, 1)",
    ),
    Setting("max_queue", int, "queued queries before RESOURCE_EXHAUSTED", FRONTEND, check=_positive),
    _frontend(
        "max_queue_per_client",
        int,
        "queued queries of one client (connection) before RESOURCE_EXHAUSTED",
        _positive,
    ),
    _frontend(
        "max_request_bytes_in_flight",
        int,
        "input bytes of the requests held at once before RESOURCE_EXHAUSTED (0: 16 largest messages)",
        _non_negative,
    ),
    Setting(
        "max_inflight_groups",
        int,
        "coding groups in flight per k + r pool workers",
        FRONTEND,
        check=_positive,
    ),
    Setting("rpc_timeout_s", float, "deadline of each backend batch", FRONTEND, check=_positive),
    _frontend(
        "discovery_interval_s",
        float,
        "seconds between two resolutions of dns:/// and file:/// targets",
        _positive,
    ),
)

ENV_VARS: dict[str, tuple[str, ...]] = {
    service: tuple(s.env_var for s in SETTINGS if service in s.services) for service in SERVICES
}


def _convert(setting: Setting, raw: str, source: str) -> Any:
    try:
        value = setting.parse(raw)
    except ValueError:
        raise ConfigError(f"{source}={raw!r}: not a valid {setting.parse.__name__}") from None
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{source}={raw!r}: must be one of {', '.join(setting.choices)}")
    if not setting.check(value):
        raise ConfigError(f"{source}={raw!r}: must be {setting.requirement or 'positive'}")
    return value


def load_config(
    service: str, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> ServingConfig:
    """Settings of `service` from CLI flags (argv), then env vars (environ), then defaults."""
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    environ = os.environ if environ is None else environ
    settings = [s for s in SETTINGS if service in s.services]
    parser = argparse.ArgumentParser(prog=f"services.{service}.server", description=f"coded-invnet {service}")
    for setting in settings:
        parser.add_argument(setting.flag, dest=setting.field, help=f"{setting.help} [{setting.env_var}]")
    args = vars(parser.parse_args([] if argv is None else list(argv)))
    values: dict[str, Any] = {"service": service}
    for setting in settings:
        if args[setting.field] is not None:
            values[setting.field] = _convert(setting, args[setting.field], setting.flag)
        elif environ.get(setting.env_var, "") != "":
            values[setting.field] = _convert(setting, environ[setting.env_var], setting.env_var)
    return replace(ServingConfig(), **values)


def load_shared_config(environ: Mapping[str, str] | None = None) -> ServingConfig:
    """The settings every service reads alike (port, TLS, ...) from env vars: for a tool that runs
    beside any service, such as its health check."""
    environ = os.environ if environ is None else environ
    shared = [s for s in SETTINGS if s.services == SERVICES and environ.get(s.env_var, "") != ""]
    return replace(ServingConfig(), **{s.field: _convert(s, environ[s.env_var], s.env_var) for s in shared})


def describe(config: ServingConfig) -> dict[str, Any]:
    """The settings of this config's service, for the start-up log line."""
    names = {s.field for s in SETTINGS if config.service in s.services}
    return {f.name: str(getattr(config, f.name)) for f in fields(config) if f.name in names}
