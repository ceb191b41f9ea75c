// Drives every public surface of the real @fal-ai/client against Kiln and prints what each call
// returned or threw as one JSON object, which tests/clients/test_js_client.py checks.
// usage: node parity.mjs <proxy|middleware> <kiln base url> <key> <png file> [multipart]
//   proxy:      the client's proxy mode (`proxyUrl`, when "always"), no custom code
//   middleware: a `requestMiddleware` that rewrites fal's three hosts onto Kiln (the README recipe)
// With `multipart` it only uploads the (large) file, which the client sends in 10 MiB parts, runs one
// request with its URL and lists the HTTP calls the client made.
import { openAsBlob } from "node:fs";
import { readFile } from "node:fs/promises";
import { ApiError, createFalClient, ValidationError } from "@fal-ai/client";

const [mode, base, key, imagePath, multipart] = process.argv.slice(2);
const PP = "fal-ai/post-processing";
const STEPS = "kiln-test/steps";
const ROUTES = [
  ["https://queue.fal.run/", "/queue/"],
  ["https://fal.run/", "/run/"],
  ["https://rest.fal.ai/", "/rest/"],
];
const calls = [];

function kilnClient(credentials) {
  // the runtime's own fetch, only noting each call
  const fetch = (url, init) => {
    calls.push(`${init?.method ?? "GET"} ${new URL(url).pathname}`);
    return globalThis.fetch(url, init);
  };
  if (mode === "proxy") {
    return createFalClient({ credentials, fetch, proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" } });
  }
  const requestMiddleware = async (request) => {
    for (const [host, path] of ROUTES) {
      if (request.url.startsWith(host)) return { ...request, url: base + path + request.url.slice(host.length) };
    }
    throw new Error(`no Kiln route for ${request.url}`);
  };
  return createFalClient({ credentials, fetch, requestMiddleware });
}

const fal = kilnClient(key);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** What a call threw, in the terms the test checks. */
function failure(error) {
  return {
    name: error?.name,
    message: error?.message,
    status: error?.status,
    isApiError: error instanceof ApiError,
    isValidationError: error instanceof ValidationError,
    fields: error instanceof ValidationError ? error.fieldErrors.map((e) => e.loc) : undefined,
    body: error?.body,
    requestId: error?.requestId,
    timeoutType: error?.timeoutType,
    isUserTimeout: error?.isUserTimeout,
  };
}

async function outcome(promise) {
  try {
    return { ok: await promise };
  } catch (error) {
    return { error: failure(error) };
  }
}

async function waitFor(endpointId, requestId, wanted) {
  for (let tries = 0; tries < 1000; tries++) {
    const status = await fal.queue.status(endpointId, { requestId, logs: true });
    if (status.status === wanted || status.status === "COMPLETED") return status;
    await sleep(20);
  }
  throw new Error(`${requestId} never reached ${wanted}`);
}

/** A long request the only worker is running: what is submitted next waits. */
async function startBlocker(tag) {
  const { request_id: requestId } = await fal.queue.submit(STEPS, { input: { steps: 400, step_seconds: 0.02, tag } });
  await waitFor(STEPS, requestId, "IN_PROGRESS");
  return requestId;
}

if (multipart) {
  // a file-backed Blob: the client slices it into parts without the file ever being read whole
  const blob = await openAsBlob(imagePath, { type: "image/png" });
  const uploadedUrl = await fal.storage.upload(blob);
  const uploadCalls = [...calls];
  const result = await fal.subscribe(PP, { input: { image_url: uploadedUrl, enable_vignette: true } });
  console.log(JSON.stringify({ uploadedUrl, uploadCalls, image: result.data.images[0] }));
  process.exit(0);
}

const png = await readFile(imagePath);
const report = {};

// -- uploads, and Blob/File inputs uploaded by the client itself -----------------------------------
report.upload = await fal.storage.upload(new Blob([png], { type: "image/png" }), { lifecycle: { expiresIn: "1d" } });
const imageUrl = report.upload;
const fileInput = await fal.subscribe(PP, {
  input: { image_url: new File([png], "photo.png", { type: "image/png" }), enable_vignette: true },
  pollInterval: 50,
});
const blobInput = await fal.run(PP, { input: { image_url: new Blob([png], { type: "image/png" }), enable_blur: true } });
const nested = await fal.run(STEPS, { input: { image_url: new Blob([png], { type: "image/png" }), tag: "nested" } });
report.autoUpload = {
  file: fileInput.data.images[0],
  blob: blobInput.data.images[0],
  stepsImageSize: nested.data.image_size,
};

// -- run, subscribe, queue -------------------------------------------------------------------------
report.run = await fal.run(PP, { input: { image_url: imageUrl, enable_solarize: true }, startTimeout: 30 });

const updates = [];
let enqueued;
const subscribed = await fal.subscribe(STEPS, {
  input: { steps: 3, step_seconds: 0.05, tag: "polled" },
  logs: true,
  pollInterval: 50,
  priority: "low",
  hint: "kiln",
  startTimeout: 30,
  onEnqueue: (requestId) => (enqueued = requestId),
  onQueueUpdate: (update) => updates.push(update),
});
report.subscribe = {
  requestId: subscribed.requestId,
  enqueued,
  data: subscribed.data,
  statuses: updates.map((update) => update.status),
  logs: (updates.at(-1).logs || []).map((line) => line.message),
};

const streamed = [];
const viaStream = await fal.subscribe(STEPS, {
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

const submitted = await fal.queue.submit(PP, { input: { image_url: imageUrl, enable_solarize: true } });
let status = await fal.queue.status(PP, { requestId: submitted.request_id, logs: true });
const seen = [status.status];
while (status.status !== "COMPLETED") {
  await sleep(20);
  status = await fal.queue.status(PP, { requestId: submitted.request_id, logs: true });
  seen.push(status.status);
}
report.queue = {
  submitted,
  statuses: seen,
  logs: status.logs.map((line) => line.message),
  result: await fal.queue.result(PP, { requestId: submitted.request_id }),
};

const watched = await fal.queue.submit(STEPS, { input: { steps: 3, step_seconds: 0.05, tag: "watched" } });
const statusStream = await fal.queue.streamStatus(STEPS, { requestId: watched.request_id, logs: true });
const events = [];
statusStream.on("data", (event) => events.push(event));
const lastEvent = await statusStream.done();
report.streamStatus = {
  statuses: events.map((event) => event.status),
  logs: events.flatMap((event) => (event.logs || []).map((line) => line.message)),
  done: lastEvent.status,
  requestId: statusStream.requestId,
  result: (await fal.queue.result(STEPS, { requestId: watched.request_id })).data.tag,
};

const hooked = await fal.queue.submit(STEPS, { input: { tag: "hooked" }, webhookUrl: process.env.WEBHOOK_URL });
await fal.queue.subscribeToStatus(STEPS, { requestId: hooked.request_id, pollInterval: 50 });
report.webhook = { requestId: hooked.request_id };

// -- cancel ----------------------------------------------------------------------------------------
{
  const blocker = await startBlocker("blocker");
  const queued = await fal.queue.submit(STEPS, { input: { tag: "never" } });
  const before = (await fal.queue.status(STEPS, { requestId: queued.request_id })).status;
  await fal.queue.cancel(STEPS, { requestId: queued.request_id });
  const queuedAfter = await fal.queue.status(STEPS, { requestId: queued.request_id });
  await fal.queue.cancel(STEPS, { requestId: blocker });
  const runningAfter = await waitFor(STEPS, blocker, "COMPLETED");
  report.cancel = {
    queued: { before, after: queuedAfter, result: await outcome(fal.queue.result(STEPS, { requestId: queued.request_id })) },
    running: { after: runningAfter, result: await outcome(fal.queue.result(STEPS, { requestId: blocker })) },
    again: await outcome(fal.queue.cancel(STEPS, { requestId: blocker })),
  };
}

// -- errors ----------------------------------------------------------------------------------------
report.errors = {
  invalid: await outcome(fal.subscribe(PP, { input: { image_url: imageUrl, grain_style: "bogus", enable_grain: true } })),
  missing: await outcome(fal.run(PP, { input: { enable_blur: true } })),
  unknownRequest: await outcome(fal.queue.status(PP, { requestId: "00000000-0000-0000-0000-000000000000" })),
  unknownEndpoint: await outcome(fal.run("kiln-test/no-such-endpoint", { input: {} })),
  failed: await outcome(fal.subscribe(STEPS, { input: { fail_with: "error" }, pollInterval: 50 })),
  wrongKey: await outcome(kilnClient("not-a-kiln-key").run(PP, { input: { image_url: imageUrl } })),
  wrongKeyUpload: await outcome(kilnClient("not-a-kiln-key").storage.upload(new Blob([png], { type: "image/png" }))),
  // no Kiln endpoint streams: the call reaches Kiln, which answers 404
  stream: await outcome(fal.stream(PP, { input: { image_url: imageUrl } }).then((stream) => stream.done())),
};

// -- timeouts --------------------------------------------------------------------------------------
{
  let impatientId;
  let markRunning;
  const running = new Promise((resolve) => (markRunning = resolve));
  const impatient = outcome(
    fal.subscribe(STEPS, {
      input: { steps: 300, step_seconds: 0.02, tag: "impatient" },
      timeout: 2500,
      pollInterval: 20,
      onEnqueue: (requestId) => (impatientId = requestId),
      onQueueUpdate: (update) => update.status === "IN_PROGRESS" && markRunning(),
    }),
  );
  await running;
  const late = await fal.queue.submit(STEPS, { input: { tag: "late" }, startTimeout: 1.1 });
  const lateRun = outcome(fal.run(STEPS, { input: { tag: "late-run" }, startTimeout: 1.1 }));
  report.timeouts = { client: await impatient, startRun: await lateRun };
  await fal.queue.subscribeToStatus(STEPS, { requestId: late.request_id, pollInterval: 50 });
  report.timeouts.startQueue = await outcome(fal.queue.result(STEPS, { requestId: late.request_id }));
  report.timeouts.clientCancelled = await waitFor(STEPS, impatientId, "COMPLETED");
}

// -- abort signals ---------------------------------------------------------------------------------
{
  // an aborted fal.run closes its connection, and Kiln cancels the request it was running: the next
  // request runs at once instead of after the 8 s the aborted one would have taken
  const controller = new AbortController();
  const aborted = outcome(
    fal.run(STEPS, { input: { steps: 400, step_seconds: 0.02, tag: "aborted-run" }, abortSignal: controller.signal }),
  );
  await sleep(500);
  controller.abort();
  report.abort = { run: await aborted };
  const abortedAt = Date.now();
  await fal.subscribe(STEPS, { input: { tag: "after-abort" }, pollInterval: 20 });
  report.abort.nextRanAfterMs = Date.now() - abortedAt;
  report.abort.submit = await outcome(fal.queue.submit(STEPS, { input: { tag: "x" }, abortSignal: AbortSignal.abort() }));

  // polling stops when its signal aborts; the request itself goes on (as on fal) until cancelled
  const pollController = new AbortController();
  let polledId;
  const polled = outcome(
    fal.subscribe(STEPS, {
      input: { steps: 300, step_seconds: 0.02, tag: "aborted-poll" },
      pollInterval: 20,
      abortSignal: pollController.signal,
      onEnqueue: (requestId) => (polledId = requestId),
      onQueueUpdate: (update) => update.status === "IN_PROGRESS" && pollController.abort(),
    }),
  );
  report.abort.subscribe = await polled;
  report.abort.subscribeStillRunning = (await fal.queue.status(STEPS, { requestId: polledId })).status;
  report.abort.result = await outcome(
    fal.queue.result(STEPS, { requestId: polledId, abortSignal: AbortSignal.abort() }),
  );
  const watching = await fal.queue.streamStatus(STEPS, { requestId: polledId, logs: true });
  const firstEvent = new Promise((resolve) => watching.on("data", resolve));
  report.abort.streamFirstEvent = (await firstEvent).status;
  watching.abort();
  report.abort.streamDone = await outcome(watching.done());
  await fal.queue.cancel(STEPS, { requestId: polledId });
  report.abort.polled = await waitFor(STEPS, polledId, "COMPLETED");
}

report.calls = calls;
console.log(JSON.stringify(report));
