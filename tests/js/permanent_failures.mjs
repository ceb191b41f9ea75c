// Calls that fail for good (an endpoint without weights, a request too large for the device), made
// with the real @fal-ai/client through its proxy mode; prints each call's error status as JSON.
// The Python test counts, at a proxy in front of Kiln, how many times the client sent each one.
// usage: node permanent_failures.mjs <proxy base url>
import { createFalClient } from "@fal-ai/client";

const [base] = process.argv.slice(2);
const fal = createFalClient({ credentials: "kiln-js-test", proxyUrl: { url: `${base}/api/fal/proxy`, when: "always" } });

async function status(call) {
  try {
    await call();
    return null;
  } catch (error) {
    return error.status ?? String(error);
  }
}

const report = {
  runWithoutWeights: await status(() => fal.run("kiln-test/needs-weights", { input: {} })),
  submitWithoutWeights: await status(() => fal.queue.submit("kiln-test/needs-weights", { input: {} })),
  runOutOfMemory: await status(() => fal.run("kiln-test/steps", { input: { fail_with: "oom", tag: "run-oom" } })),
  subscribeOutOfMemory: await status(() =>
    fal.subscribe("kiln-test/steps", { input: { fail_with: "oom", tag: "subscribe-oom" }, pollInterval: 100 }),
  ),
};
console.log(JSON.stringify(report));
