// Calls that fail for good, made with the real @fal-ai/client through its proxy mode; prints each
// call's error status as JSON. The Python test counts, at a proxy in front of Kiln, how many times the
// client sent each one.
// - an endpoint without weights and a request too large for the device (no retry can fix either);
// - requests whose start timeout (`startTimeout`, the X-Fal-Request-Timeout header) passes while a
//   long request occupies the worker: 504 marked a user timeout, which the client must not retry.
// usage: node permanent_failures.mjs <proxy base url> <kiln base url>
// (the long request goes straight to Kiln, so the proxy counts only the calls under test)
import { createFalClient } from "@fal-ai/client";

const [base, kiln] = process.argv.slice(2);
const KEY = "kiln-js-test";
const fal = createFalClient({ credentials: KEY, proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" } });
const PP = "fal-ai/post-processing";
const image = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGPkOiHHwMDAxMDAwMDAAAALVgD0I4hqmwAAAABJRU5ErkJggg==";

async function status(call) {
  try {
    await call();
    return null;
  } catch (error) {
    return error.status ?? String(error);
  }
}

async function direct(method, path, body) {
  const response = await fetch(`${kiln}${path}`, {
    method,
    headers: { Authorization: `Key ${KEY}`, "Content-Type": "application/json" },
    body: body && JSON.stringify(body),
  });
  return response.json();
}

const report = {
  runWithoutWeights: await status(() => fal.run("kiln-test/needs-weights", { input: {} })),
  submitWithoutWeights: await status(() => fal.queue.submit("kiln-test/needs-weights", { input: {} })),
  runOutOfMemory: await status(() => fal.run("kiln-test/steps", { input: { fail_with: "oom", tag: "run-oom" } })),
  subscribeOutOfMemory: await status(() =>
    fal.subscribe("kiln-test/steps", { input: { fail_with: "oom", tag: "subscribe-oom" }, pollInterval: 100 }),
  ),
};

const blocker = await direct("POST", "/queue/kiln-test/steps", { steps: 400, step_seconds: 0.02, tag: "blocker" });
while ((await direct("GET", new URL(blocker.status_url).pathname)).status !== "IN_PROGRESS") {
  await new Promise((resolve) => setTimeout(resolve, 20));
}
const input = { image_url: image, enable_blur: true };
[report.runStartTimeout, report.subscribeStartTimeout] = await Promise.all([
  status(() => fal.run(PP, { input, startTimeout: 1.1 })),
  status(() => fal.subscribe(PP, { input, startTimeout: 1.1, pollInterval: 100 })),
]);
await direct("PUT", new URL(blocker.cancel_url).pathname);
console.log(JSON.stringify(report));
