# FAL_KEY: a Kiln API key; KILN_HOST: Kiln's HTTPS host:port; SSL_CERT_FILE: its CA, if not a public one
export FAL_RUN_HOST="$KILN_HOST/run" FAL_QUEUE_RUN_HOST="$KILN_HOST/queue"
python3 - <<'PY'
import fal_client

image_url = fal_client.encode_file("input.png")  # a data URI: the image travels inside the request
result = fal_client.subscribe("fal-ai/post-processing", {"image_url": image_url, "enable_vignette": True}, with_logs=True)
print(result["images"][0]["url"])
PY
