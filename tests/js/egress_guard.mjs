// Lets a node process reach loopback only, and records whatever else it tries: loaded with
// `node --import ./egress_guard.mjs script.mjs`, before the script, which runs unmodified.
// `fetch` to a host that is not loopback is refused before any connection (and so is any other
// socket, as a backstop), appending `refused <host>` to the file named by KILN_EGRESS_LOG (whose
// first line, `active <pid>`, shows the guard was loaded). The refusal is a plain Error named
// EgressRefused, which no client's retry logic takes for a network failure.
import { appendFileSync } from "node:fs";
import net from "node:net";

const log = process.env.KILN_EGRESS_LOG;
const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|\[?::1\]?)$/i;

function refuse(host) {
  appendFileSync(log, `refused ${host}\n`);
  const error = new Error(`this process may reach loopback only, not ${host}`);
  error.name = "EgressRefused";
  return error;
}

if (log) {
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (input, init) => {
    const url = new URL(input instanceof Request ? input.url : String(input));
    if (!LOOPBACK.test(url.hostname)) throw refuse(url.host);
    return realFetch(input, init);
  };
  const realConnect = net.Socket.prototype.connect;
  net.Socket.prototype.connect = function connect(...args) {
    const first = Array.isArray(args[0]) ? args[0][0] : args[0]; // net.connect passes [options, callback]
    const options = typeof first === "object" && first !== null ? first : {};
    const host = options.path ? "localhost" : (options.host ?? (typeof args[1] === "string" ? args[1] : "localhost"));
    if (!LOOPBACK.test(host)) {
      const error = refuse(host);
      process.nextTick(() => this.destroy(error));
      return this;
    }
    return realConnect.apply(this, args);
  };
  appendFileSync(log, `active ${process.pid}\n`);
}
