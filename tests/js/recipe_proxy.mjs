import { createFalClient } from "@fal-ai/client";
import { readFile } from "node:fs/promises";

const fal = createFalClient({
  credentials: process.env.FAL_KEY,
  proxyUrl: { url: `${process.env.KILN_URL}/api/fal/proxy`, when: "always" },
});
const image = new Blob([await readFile("input.png")], { type: "image/png" });
const result = await fal.subscribe("fal-ai/post-processing", { input: { image_url: image, enable_vignette: true }, logs: true });
console.log(result.data.images[0].url);
