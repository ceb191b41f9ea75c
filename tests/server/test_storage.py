"""fal's upload protocol over HTTP, and how stored files are served back."""

from __future__ import annotations

from testkit.images import gradient_image, png_bytes


def test_cdn_token_then_upload(client):
    token = client.post("/rest/storage/auth/token?storage_type=fal-cdn-v3", json={}).json()
    assert token["token_type"] == "Bearer" and token["base_url"].endswith("/cdn")
    assert token["expires_at"].endswith("+00:00")
    data = png_bytes(gradient_image())
    uploaded = client.post(
        "/cdn/files/upload",
        content=data,
        headers={"Authorization": f"Bearer {token['token']}", "Content-Type": "image/png", "X-Fal-File-Name": "in.png"},
    )
    assert uploaded.status_code == 200
    url = uploaded.json()["access_url"]
    served = client.get(url.split("127.0.0.1:8000", 1)[1])
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"


def test_upload_needs_a_valid_token(client):
    assert client.post("/cdn/files/upload", content=b"x", headers={"Authorization": "Bearer forged.token"}).status_code == 401
    assert client.post("/cdn/files/upload", content=b"x", headers={"Authorization": "Bearer \xf1.\xfc".encode("latin-1")}).status_code == 401


def test_initiate_then_put(client):
    target = client.post("/rest/storage/upload/initiate?storage_type=fal-cdn-v3", json={"file_name": "../../evil name.png", "content_type": "image/png"}).json()
    upload_path = target["upload_url"].split("127.0.0.1:8000", 1)[1]
    data = png_bytes(gradient_image(5, 5))
    assert client.put(upload_path, content=data).status_code == 200
    file_path = target["file_url"].split("127.0.0.1:8000", 1)[1]
    assert file_path.endswith("/evil_name.png")
    assert client.get(file_path).content == data
    forged = upload_path.rsplit("token=", 1)[0] + "token=" + "x" * 40
    assert client.put(forged, content=b"other").status_code == 401


def test_non_images_are_served_as_attachments(client):
    target = client.post("/rest/storage/upload/initiate", json={"file_name": "page.html", "content_type": "text/html"}).json()
    client.put(target["upload_url"].split("127.0.0.1:8000", 1)[1], content=b"<script>alert(1)</script>")
    served = client.get(target["file_url"].split("127.0.0.1:8000", 1)[1])
    assert served.headers["content-type"] == "application/octet-stream"
    assert served.headers["content-disposition"].startswith("attachment")


def test_uploads_over_the_limit_are_413(make_client):
    client = make_client(max_upload_bytes=100)
    token = client.post("/rest/storage/auth/token", json={}).json()["token"]
    response = client.post("/cdn/files/upload", content=b"x" * 101, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 413


def test_missing_files_are_404(client):
    assert client.get("/files/AAAAAAAAAAAAAAAAAAAAAA/x.png").status_code == 404
    assert client.get("/files/..%2F..%2Fqueue.sqlite3/x").status_code == 404


def test_own_file_urls_are_read_from_storage_not_fetched(client):
    """Kiln's own URLs point at loopback, which the SSRF guard refuses; they must still work as inputs."""
    token = client.post("/rest/storage/auth/token", json={}).json()["token"]
    url = client.post(
        "/cdn/files/upload", content=png_bytes(gradient_image(9, 7)), headers={"Authorization": f"Bearer {token}"}
    ).json()["access_url"]
    result = client.post("/run/kiln-test/steps", json={"image_url": url})
    assert result.status_code == 200 and result.json()["image_size"] == [9, 7]
