// The deprecated @fal-ai/serverless-client 0.15.0 against Kiln through the README's requestMiddleware
// recipe (the same rewrite as recipe_serverless_client.mjs): its public calls, each reported as what
// it returned or threw, as one JSON object for tests/clients/test_no_egress.py.
// usage: node serverless_client.mjs <kiln base url> <key> <png file>
import { readFile } from "node:fs/promises";
import * as fal from "@fal-ai/serverless-client";

const [kiln, key, imagePath] = process.argv.slice(2);
const STEPS = "kiln-test/steps";
const PP = "fal-ai/post-processing";
const routes = [["https://queue.fal.run/", "/queue/"], ["https://fal.run/", "/run/"], ["https://rest.alpha.fal.ai/", "/rest/"]];
const requestMiddleware = async (request) => {
  for (const [host, path] of routes) {
    if (request.url.startsWith(host)) return { ...request, url: kiln + path + request.url.slice(host.length) };
  }
  throw new Error(`no Kiln route for ${request.url}`);
};
fal.config({ credentials: key, requestMiddleware });

async function outcome(promise) {
  try {
    return { ok: await promise };
  } catch (error) {
    return { error: { name: error.name, status: error.status, body: error.body, fields: error.fieldErrors?.map((e) => e.loc) } };
  }
}

const png = await readFile(imagePath);
const report = {};
report.upload = await fal.storage.upload(new Blob([png], { type: "image/png" }));
report.run = await fal.run(PP, { input: { image_url: new Blob([png], { type: "image/png" }), enable_blur: true } });

const updates = [];
report.subscribe = await fal.subscribe(STEPS, {
  input: { steps: 3, step_seconds: 0.05, tag: "polled" },
  logs: true,
  pollInterval: 50,
  onQueueUpdate: (update) => updates.push(update),
});
report.subscribeLogs = (updates.at(-1).logs || []).map((line) => line.message);
const streamed = [];
report.streaming = await fal.subscribe(STEPS, {
  input: { steps: 3, step_seconds: 0.05, tag: "streamed" },
  logs: true,
  mode: "streaming",
  onQueueUpdate: (update) => streamed.push(update.status),
});
report.streamingStatuses = streamed;

const { request_id: requestId } = await fal.queue.submit(STEPS, { input: { steps: 2, tag: "queued" } });
const events = [];
const stream = await fal.queue.streamStatus(STEPS, { requestId, logs: true });
stream.on("data", (event) => events.push(event.status));
report.streamStatus = { events, done: (await stream.done()).status };
report.status = await fal.queue.status(STEPS, { requestId, logs: true });
report.result = await fal.queue.result(STEPS, { requestId });

const blocker = await fal.queue.submit(STEPS, { input: { steps: 300, step_seconds: 0.02, tag: "blocker" } });
while ((await fal.queue.status(STEPS, { requestId: blocker.request_id })).status !== "IN_PROGRESS") {
  await new Promise((resolve) => setTimeout(resolve, 20));
}
const queued = await fal.queue.submit(STEPS, { input: { tag: "never" } });
await fal.queue.cancel(STEPS, { requestId: queued.request_id });
await fal.queue.cancel(STEPS, { requestId: blocker.request_id });
report.cancelled = [
  await outcome(fal.queue.result(STEPS, { requestId: queued.request_id })),
  await fal.queue.subscribeToStatus(STEPS, { requestId: blocker.request_id, pollInterval: 20 }),
];

report.errors = {
  invalid: await outcome(fal.run(PP, { input: { image_url: report.upload, grain_style: "bogus" } })),
  unknownRequest: await outcome(fal.queue.status(PP, { requestId: "00000000-0000-0000-0000-000000000000" })),
  unknownEndpoint: await outcome(fal.run("kiln-test/no-such-endpoint", { input: {} })),
};
fal.config({ credentials: "not-a-kiln-key", requestMiddleware });
report.errors.wrongKey = await outcome(fal.run(PP, { input: { image_url: report.upload } }));
console.log(JSON.stringify(report));
