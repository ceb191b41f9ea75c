// Home: the server-rendered endpoint table, plus the key's most recent requests.
import { call, el, formatTime } from "./kiln.js";

async function recent() {
  const list = document.getElementById("recent");
  const answer = await call("GET", "/ui/api/history?limit=8");
  list.replaceChildren();
  if (!answer.ok) {
    list.append(el("li", { class: "muted" }, answer.status === 401 ? "Enter your API key above to see your requests." : "Could not load your requests."));
    return;
  }
  if (!answer.body.items.length) list.append(el("li", { class: "muted" }, "No requests yet: open a playground."));
  for (const item of answer.body.items) {
    const outcome = item.status !== "COMPLETED" ? item.status : item.error_type || "OK";
    list.append(
      el("li", {}, el("a", { href: item.playground_url }, el("code", {}, item.endpoint)), ` ${outcome} · ${formatTime(item.created_at)}`),
    );
  }
}

document.addEventListener("kiln:key", recent);
recent();
