"""The real `fal-client` 1.0.3 against a Kiln it cannot tell from fal.

Plain HTTP: the client's URL settings pointed at Kiln (the module globals fal's own docs leave
undocumented). TLS: environment variables only, with a self-signed certificate made here; this
has to run in a fresh interpreter because fal_client reads the variables at import time.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time

import fal_client
import fal_client.client
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.files import FileStore
from testkit.images import gradient_image, png_bytes
from testkit.servers import REPO, KilnProcess
from tests.fixtures.apps import TEST_PIPELINES
from tests.fixtures.large_files import MIB, sha256_of, write_padded_png

pytestmark = pytest.mark.slow

PP = "fal-ai/post-processing"


@pytest.fixture
def fal(shared_kiln, monkeypatch) -> fal_client.SyncClient:
    base = shared_kiln.url
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{base}/queue/")
    monkeypatch.setattr(fal_client.client, "RUN_URL_FORMAT", f"{base}/run/")
    monkeypatch.setattr(fal_client.client, "REST_URL", f"{base}/rest")
    monkeypatch.setattr(fal_client.client, "CDN_URL", f"{base}/cdn")
    return fal_client.SyncClient(key="kiln-python-test")


@pytest.fixture
def image_url(fal) -> str:
    return fal.upload(png_bytes(gradient_image(24, 16)), "image/png", file_name="input.png")


def test_submit_status_with_logs_and_result(fal, image_url):
    handle = fal.submit(PP, {"image_url": image_url, "enable_vignette": True})
    seen = []
    while not isinstance(status := handle.status(with_logs=True), fal_client.Completed):
        seen.append(type(status).__name__)
        time.sleep(0.05)
    assert any("Completed in" in line["message"] for line in status.logs)
    assert status.metrics["inference_time"] > 0 and status.error is None
    result = handle.get()
    image = result["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (24, 16, "image/png")
    assert image["url"].startswith(fal_client.client.CDN_URL.removesuffix("/cdn"))


def test_subscribe_with_logs_and_callbacks(fal, image_url):
    events, enqueued = [], []
    result = fal.subscribe(
        "kiln-test/steps",
        {"steps": 3, "step_seconds": 0.05, "tag": "subscribed"},
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=events.append,
    )
    assert result["tag"] == "subscribed" and len(enqueued) == 1
    assert isinstance(events[-1], fal_client.Completed)
    assert [line["message"] for line in events[-1].logs if line["message"].startswith("step")] == [
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]


def test_run(fal, image_url):
    result = fal.run(PP, {"image_url": image_url, "enable_solarize": True})
    assert result["images"][0]["width"] == 24


def test_sync_mode_returns_a_data_uri(fal, image_url):
    result = fal.run(PP, {"image_url": image_url, "enable_color_correction": True, "brightness": 20, "sync_mode": True})
    assert result["images"][0]["url"].startswith("data:image/png;base64,")


def test_uploaded_url_through_the_fallback_repository(fal):
    url = fal.upload(png_bytes(gradient_image(10, 8)), "image/png", repository="fal")
    result = fal.run(PP, {"image_url": url, "enable_blur": True})
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (10, 8)


def test_upload_image_helper_and_data_uri_inputs(fal):
    from PIL import Image

    url = fal.upload_image(Image.fromarray(gradient_image(12, 6)), format="png")
    assert fal.run(PP, {"image_url": url})["images"][0]["width"] == 12
    data_uri = fal_client.encode_image(Image.fromarray(gradient_image(7, 5)), format="png")
    assert fal.run(PP, {"image_url": data_uri})["images"][0]["height"] == 5


def test_multipart_upload_of_120_mib_used_as_an_input(fal, shared_kiln, tmp_path):
    """Issue 11 item 2: fal-client uploads a file over 100 MiB in 10 MiB parts
    (`/files/upload/multipart`, an ETag per part, complete with the part list), which answered 404.
    The real client uploads 120 MiB with `upload_file`; the file arrives byte for byte and its URL
    works as an input."""
    path = tmp_path / "large.png"
    digest = write_padded_png(path, 120 * MIB)
    try:
        url = fal.upload_file(path)
    finally:
        path.unlink()
    stored = FileStore(shared_kiln.data_dir / "files", shared_kiln.url).resolve(url)
    try:
        assert url.startswith(shared_kiln.url + "/files/") and url.endswith("/large.png")
        assert stored.size == 120 * MIB and sha256_of(stored.path) == digest
        result = fal.run(PP, {"image_url": url, "enable_vignette": True})
        assert (result["images"][0]["width"], result["images"][0]["height"]) == (24, 16)
    finally:
        stored.path.unlink()


def test_cancel(fal):
    blocker = fal.submit("kiln-test/steps", {"steps": 400, "step_seconds": 0.02})
    while not isinstance(blocker.status(), fal_client.InProgress):
        time.sleep(0.02)
    queued = fal.submit("kiln-test/steps", {"tag": "never"})
    queued.cancel()
    status = queued.status()
    assert isinstance(status, fal_client.Completed) and status.error_type == "client_cancelled"
    blocker.cancel()
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        blocker.get()
    assert raised.value.status_code == 499


def test_invalid_enum_and_missing_image_url_are_422(fal, image_url):
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        fal.submit(PP, {"image_url": image_url, "grain_style": "bogus"})
    assert raised.value.status_code == 422
    assert raised.value.message[0]["loc"] == ["body", "grain_style"]
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        fal.run(PP, {"enable_blur": True})
    assert raised.value.status_code == 422
    assert raised.value.message[0]["loc"] == ["body", "image_url"]


def test_unknown_request_id_is_404(fal):
    with pytest.raises(fal_client.client.FalClientHTTPError) as raised:
        fal.status(PP, "00000000-0000-0000-0000-000000000000")
    assert raised.value.status_code == 404


def self_signed_certificate(folder) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


TLS_SCRIPT = r"""
import json, sys, time
import fal_client
from testkit.images import data_uri, gradient_image, png_bytes

report = {}
image = data_uri(png_bytes(gradient_image(20, 10)))
handle = fal_client.submit("fal-ai/post-processing", {"image_url": image, "enable_vignette": True})
status = handle.status(with_logs=True)
while not isinstance(status, fal_client.Completed):
    time.sleep(0.05)
    status = handle.status(with_logs=True)
report["status_logs"] = [line["message"] for line in status.logs]
report["result"] = handle.get()
report["subscribe"] = fal_client.subscribe("kiln-test/steps", {"steps": 2, "tag": "tls"}, with_logs=True)
report["run"] = fal_client.run("fal-ai/post-processing", {"image_url": image, "sync_mode": True})
blocker = fal_client.submit("kiln-test/steps", {"steps": 400, "step_seconds": 0.02})
while not isinstance(blocker.status(), fal_client.InProgress):
    time.sleep(0.02)
queued = fal_client.submit("kiln-test/steps", {})
queued.cancel()
report["cancelled"] = queued.status().error_type
blocker.cancel()
errors = {}
for name, call in [
    ("invalid_enum", lambda: fal_client.run("fal-ai/post-processing", {"image_url": image, "tint_mode": "plaid"})),
    ("missing_image_url", lambda: fal_client.run("fal-ai/post-processing", {})),
    ("unknown_id", lambda: fal_client.status("fal-ai/post-processing", "no-such-request")),
]:
    try:
        call()
        errors[name] = None
    except fal_client.client.FalClientHTTPError as error:
        errors[name] = error.status_code
report["errors"] = errors
print(json.dumps(report))
"""


def test_tls_with_environment_variables_only(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    server = KilnProcess(tmp_path / "data", pipelines=TEST_PIPELINES, tls=(cert, key)).start()
    try:
        host = f"127.0.0.1:{server.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "FAL_KEY": "kiln-tls-test",
            "FAL_RUN_HOST": f"{host}/run",
            "FAL_QUEUE_RUN_HOST": f"{host}/queue",
            "SSL_CERT_FILE": str(cert),
        }
        completed = subprocess.run(
            [sys.executable, "-c", TLS_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        report = json.loads(completed.stdout.strip().splitlines()[-1])
    finally:
        server.stop()
    assert any(line.startswith("Completed in") for line in report["status_logs"])
    assert report["result"]["images"][0]["url"].startswith(f"https://{host}/files/")
    assert report["subscribe"]["tag"] == "tls"
    assert report["run"]["images"][0]["url"].startswith("data:image/png;base64,")
    assert report["cancelled"] == "client_cancelled"
    assert report["errors"] == {"invalid_enum": 422, "missing_image_url": 422, "unknown_id": 404}
