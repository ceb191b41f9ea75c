import os

import fal_client
import fal_client.client as fc

kiln = os.environ["KILN_URL"]  # e.g. http://127.0.0.1:8000 or https://kiln.example.com:8443
fc.QUEUE_URL_FORMAT, fc.RUN_URL_FORMAT = f"{kiln}/queue/", f"{kiln}/run/"
fc.REST_URL, fc.CDN_URL = f"{kiln}/rest", f"{kiln}/cdn"
fc.REALTIME_URL_FORMAT = kiln.replace("http", "ws", 1) + "/run/"

image_url = fal_client.upload_file("input.png")
result = fal_client.subscribe("fal-ai/post-processing", {"image_url": image_url, "enable_vignette": True}, with_logs=True)
print(result["images"][0]["url"])
