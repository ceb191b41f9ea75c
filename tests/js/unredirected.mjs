// Two configurations that look like the README's but leave calls on fal's hosts when run by node:
// the deprecated @fal-ai/serverless-client's `proxyUrl` and @fal-ai/client's `proxyUrl` as a plain
// string both apply only in browsers. Run under egress_guard.mjs, which refuses and records each
// call; prints what each subscribe threw.
// usage: node --import ./egress_guard.mjs unredirected.mjs <kiln base url> <key>
import { createFalClient } from "@fal-ai/client";
import * as deprecated from "@fal-ai/serverless-client";

const [kiln, key] = process.argv.slice(2);
const input = { image_url: "data:image/png;base64,iVBORw0KGgo=" };

async function thrown(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return error.name;
  }
}

deprecated.config({ credentials: key, proxyUrl: `${kiln}/api/fal/proxy` });
const stringProxy = createFalClient({ credentials: key, proxyUrl: `${kiln}/api/fal/proxy` });
console.log(
  JSON.stringify({
    serverlessClientProxyUrl: await thrown(deprecated.subscribe("fal-ai/post-processing", { input })),
    clientStringProxyUrl: await thrown(stringProxy.subscribe("fal-ai/post-processing", { input })),
  }),
);
