// Drives the real @fal-ai/client against Kiln through its proxy mode (no custom client code)
// and prints what each call returned as one JSON object for the Python test to check.
// usage: node drive.mjs <kiln base url> <png file> [multipart]
// With `multipart` it only uploads the (large) file, which the client sends in 10 MiB parts, and runs
// one request with its URL; it also lists the HTTP calls the client made.
import { openAsBlob } from "node:fs";
import { readFile } from "node:fs/promises";
import { createFalClient, ValidationError } from "@fal-ai/client";

const [base, imagePath, mode] = process.argv.slice(2);
const calls = [];
const fal = createFalClient({
  credentials: "kiln-js-test",
  proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" },
  // the runtime's own fetch, only noting each call
  fetch: (url, init) => {
    calls.push(`${init?.method ?? "GET"} ${new URL(url).pathname}`);
    return globalThis.fetch(url, init);
  },
});
const report = {};

if (mode === "multipart") {
  // a file-backed Blob: the client slices it into parts without the file ever being read whole
  const blob = await openAsBlob(imagePath, { type: "image/png" });
  const uploadedUrl = await fal.storage.upload(blob);
  const uploadCalls = [...calls];
  const result = await fal.subscribe("fal-ai/post-processing", { input: { image_url: uploadedUrl, enable_vignette: true } });
  console.log(JSON.stringify({ uploadedUrl, uploadCalls, image: result.data.images[0] }));
  process.exit(0);
}

const png = await readFile(imagePath);
const imageUrl = await fal.storage.upload(new Blob([png], { type: "image/png" }));
report.uploadedUrl = imageUrl;

const updates = [];
const subscribed = await fal.subscribe("fal-ai/post-processing", {
  input: { image_url: imageUrl, enable_vignette: true, vignette_strength: 0.8 },
  logs: true,
  onQueueUpdate: (update) => updates.push(update.status),
});
report.subscribe = { requestId: subscribed.requestId, data: subscribed.data, statuses: updates };

const streamed = [];
const viaStream = await fal.subscribe("kiln-test/steps", {
  input: { steps: 3, step_seconds: 0.05, tag: "streamed" },
  logs: true,
  mode: "streaming",
  onQueueUpdate: (update) => streamed.push(update),
});
report.streaming = {
  data: viaStream.data,
  statuses: streamed.map((update) => update.status),
  logs: (streamed.at(-1).logs || []).map((line) => line.message),
};

const { request_id: requestId } = await fal.queue.submit("fal-ai/post-processing", {
  input: { image_url: imageUrl, enable_solarize: true },
});
let status = await fal.queue.status("fal-ai/post-processing", { requestId, logs: true });
const seen = [status.status];
while (status.status !== "COMPLETED") {
  await new Promise((resolve) => setTimeout(resolve, 50));
  status = await fal.queue.status("fal-ai/post-processing", { requestId, logs: true });
  seen.push(status.status);
}
const result = await fal.queue.result("fal-ai/post-processing", { requestId });
report.queue = { requestId, statuses: seen, logs: status.logs.map((line) => line.message), result };

try {
  await fal.subscribe("fal-ai/post-processing", { input: { image_url: imageUrl, grain_style: "bogus", enable_grain: true } });
  report.invalid = { thrown: false };
} catch (error) {
  report.invalid = { thrown: true, status: error.status, isValidationError: error instanceof ValidationError, fields: error.fieldErrors?.map((e) => e.loc) };
}

console.log(JSON.stringify(report));
