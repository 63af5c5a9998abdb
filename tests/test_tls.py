"""TLS and mutual TLS with certificates made here (nothing private is committed): a TLS server refuses
plaintext, an mTLS backend refuses a client without a certificate, a TLS system answers the SDK end to
end, and bad TLS settings fail fast naming the setting."""

from __future__ import annotations

import asyncio
import csv
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serving_models import K, images, service_config, wait_serving

from coded_invnet.client import AsyncClient, Client, TlsOptions
from coded_invnet.serving import health_check as health
from coded_invnet.serving.channels import create_channel
from coded_invnet.serving.config import ServingConfig, load_config, load_shared_config
from coded_invnet.serving.errors import ConfigError
from coded_invnet.tools import openloop
from coded_invnet.tools.certificates import Certificates, make_certificates
from coded_invnet.tools.launcher import launch
from services.worker.server import start as start_worker


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def tls_worker(model_dir: Path, certificates: Certificates, mutual: bool) -> ServingConfig:
    return service_config(
        "worker",
        model_dir,
        tls_cert=certificates.server_cert,
        tls_key=certificates.server_key,
        tls_ca=certificates.ca,
        tls_require_client_cert="on" if mutual else "off",
    )


async def health_check(channel: grpc.aio.Channel) -> grpc.StatusCode:
    """OK when the server answered the health check, else the call's error code."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_a_tls_server_refuses_plaintext_and_answers_tls(model_dir: Path, certificates: Certificates) -> None:
    async def scenario() -> None:
        host = await start_worker(tls_worker(model_dir, certificates, mutual=False))
        port = host.port
        target = f"127.0.0.1:{port}"
        try:
            async with create_channel(target, tls=TlsOptions(certificates.ca)) as secure:
                await wait_serving(secure)
            async with grpc.aio.insecure_channel(target) as plain:
                assert await health_check(plain) == grpc.StatusCode.UNAVAILABLE
            # a server certificate from another CA is not trusted either
            other = make_certificates(certificates.ca.parent / "other")
            async with create_channel(target, tls=TlsOptions(other.ca)) as untrusted:
                assert await health_check(untrusted) == grpc.StatusCode.UNAVAILABLE
        finally:
            await host.stop()

    asyncio.run(scenario())


def test_an_mtls_backend_refuses_a_client_without_a_certificate(
    model_dir: Path, certificates: Certificates
) -> None:
    async def scenario() -> None:
        host = await start_worker(tls_worker(model_dir, certificates, mutual=True))
        port = host.port
        target = f"127.0.0.1:{port}"
        with_cert = TlsOptions(certificates.ca, certificates.client_cert, certificates.client_key)
        try:
            async with create_channel(target, tls=with_cert) as channel:
                await wait_serving(channel)
            async with create_channel(target, tls=TlsOptions(certificates.ca)) as channel:
                assert await health_check(channel) == grpc.StatusCode.UNAVAILABLE
        finally:
            await host.stop()

    asyncio.run(scenario())


def test_a_tls_system_answers_the_sdk_end_to_end(model_dir: Path, tmp_path: Path) -> None:
    """Every port TLS, the backends mutual TLS: the frontend reaches them with its client certificate."""
    with launch(model_dir, "coded-invnet", K, log_dir=tmp_path, tls=True) as system:
        assert system.client_tls is not None
        with Client(system.frontend.target, timeout_s=10, tls=system.client_tls) as client:
            predictions = client.predict_batch(images(2 * K))
        assert len(predictions) == 2 * K and all(0 <= p.label < 10 for p in predictions)

        async def asynchronously() -> int:
            async with AsyncClient(system.frontend.target, timeout_s=10, tls=system.client_tls) as client:
                return (await client.predict(images(1)[0])).label

        assert 0 <= asyncio.run(asynchronously()) < 10
        with Client(system.frontend.target, timeout_s=3) as plain, pytest.raises(grpc.RpcError) as caught:
            plain.predict(images(1)[0])
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]

        # the load tools take the CA too
        out = tmp_path / "openloop.csv"
        ca, target = str(system.client_tls.ca_file), system.frontend.target
        openloop.main(
            ["--target", target, "--tls-ca", ca, "--rate", "20", "--duration", "1", "--out", str(out)]
        )
        with open(out) as file:
            codes = [row["code"] for row in csv.DictReader(file)]
        assert codes and set(codes) == {"OK"}


def pem_settings(certificates: Certificates) -> dict[str, str]:
    return {
        "cert": str(certificates.server_cert),
        "key": str(certificates.server_key),
        "ca": str(certificates.ca),
        "client_cert": str(certificates.client_cert),
        "client_key": str(certificates.client_key),
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"CODED_TLS_CERT": "cert"}, "CODED_TLS_CERT and CODED_TLS_KEY come together"),
        ({"CODED_TLS_KEY": "key"}, "CODED_TLS_CERT and CODED_TLS_KEY come together"),
        (
            {"CODED_TLS_CERT": "/no/such.pem", "CODED_TLS_KEY": "key"},
            "CODED_TLS_CERT='/no/such.pem': must be",
        ),
        (
            {"CODED_TLS_REQUIRE_CLIENT_CERT": "yes"},
            "CODED_TLS_REQUIRE_CLIENT_CERT='yes': must be one of off, on",
        ),
        (
            {"CODED_TLS_CERT": "cert", "CODED_TLS_KEY": "key", "CODED_TLS_REQUIRE_CLIENT_CERT": "on"},
            "CODED_TLS_REQUIRE_CLIENT_CERT=on needs",
        ),
        (
            {"CODED_TLS_CLIENT_CERT": "client_cert", "CODED_TLS_CLIENT_KEY": "client_key"},
            "needs CODED_TLS_CA",
        ),
        ({"CODED_TLS_CLIENT_KEY": "client_key", "CODED_TLS_CA": "ca"}, "CODED_TLS_CLIENT_CERT and"),
    ],
)
def test_bad_tls_settings_fail_fast_naming_the_setting(
    certificates: Certificates, settings: dict[str, str], message: str
) -> None:
    files = pem_settings(certificates)
    environ = {name: files.get(value, value) for name, value in settings.items()}
    with pytest.raises(ConfigError) as caught:
        load_config("frontend", [], environ)
    assert message in str(caught.value)


def test_tls_settings_are_read_for_every_service(certificates: Certificates) -> None:
    files = pem_settings(certificates)
    environ = {
        "CODED_TLS_CERT": files["cert"],
        "CODED_TLS_KEY": files["key"],
        "CODED_TLS_CA": files["ca"],
        "CODED_TLS_REQUIRE_CLIENT_CERT": "on",
    }
    for service in ("worker", "encoder", "decoder", "frontend"):
        cfg = load_config(service, [], environ)
        assert (cfg.tls_cert, cfg.tls_require_client_cert) == (certificates.server_cert, "on")
    assert ServingConfig().tls_cert is None  # plaintext by default
    with pytest.raises(ConfigError, match="CODED_TLS_CLIENT_CERT and CODED_TLS_CLIENT_KEY"):
        replace(ServingConfig(), tls_client_cert=certificates.client_cert)


def test_a_certificate_that_is_not_pem_is_a_config_error(model_dir: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cfg = service_config("worker", model_dir, tls_cert=garbage, tls_key=garbage)
    with pytest.raises(ConfigError, match="CODED_TLS_CERT/CODED_TLS_KEY are not a PEM pair"):
        asyncio.run(start_worker(cfg))


def test_the_health_check_probe_speaks_the_services_tls(model_dir: Path, certificates: Certificates) -> None:
    """What a Kubernetes exec probe runs beside an mTLS backend: it needs the client certificate."""

    async def scenario() -> None:
        host = await start_worker(tls_worker(model_dir, certificates, mutual=True))
        port = host.port
        environ = {
            "CODED_PORT": str(port),
            "CODED_TLS_CERT": str(certificates.server_cert),
            "CODED_TLS_KEY": str(certificates.server_key),
            "CODED_TLS_CA": str(certificates.ca),
            "CODED_TLS_SERVER_NAME": "localhost",
        }
        client = {
            "CODED_TLS_CLIENT_CERT": str(certificates.client_cert),
            "CODED_TLS_CLIENT_KEY": str(certificates.client_key),
        }
        with_client_cert = load_shared_config(environ | client)
        try:
            async with create_channel(f"127.0.0.1:{port}", tls=health.probe_tls(with_client_cert)) as channel:
                await wait_serving(channel)
            assert await asyncio.to_thread(health.check, with_client_cert) == "SERVING"
            assert await asyncio.to_thread(health.check, load_shared_config(environ)) == "UNAVAILABLE"
            plaintext = load_shared_config({"CODED_PORT": str(port)})
            assert await asyncio.to_thread(health.check, plaintext) == "UNAVAILABLE"
        finally:
            await host.stop()

    asyncio.run(scenario())
