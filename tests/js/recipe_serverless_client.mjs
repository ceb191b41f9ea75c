import * as fal from "@fal-ai/serverless-client";
import { readFile } from "node:fs/promises";

const kiln = process.env.KILN_URL;
const routes = [["https://queue.fal.run/", "/queue/"], ["https://fal.run/", "/run/"], ["https://rest.alpha.fal.ai/", "/rest/"]];
fal.config({
  credentials: process.env.FAL_KEY,
  requestMiddleware: async (request) => {
    for (const [host, path] of routes) {
      if (request.url.startsWith(host)) return { ...request, url: kiln + path + request.url.slice(host.length) };
    }
    throw new Error(`no Kiln route for ${request.url}`);
  },
});
const image = new Blob([await readFile("input.png")], { type: "image/png" });
const result = await fal.subscribe("fal-ai/post-processing", { input: { image_url: image, enable_vignette: true }, logs: true });
console.log(result.images[0].url);
