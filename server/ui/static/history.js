// History: the key's requests, newest first, filtered by endpoint and status; each row reopens its
// request in the endpoint's playground with the inputs it was sent with.
import { call, config, el, errorText, formatTime } from "./kiln.js";

const $ = (id) => document.getElementById(id);
let before = null;

function badge(item) {
  if (item.status !== "COMPLETED") return el("span", { class: "badge busy" }, item.status);
  if (item.error_type || (item.status_code && item.status_code >= 300)) {
    return el("span", { class: "badge bad", title: item.error || "" }, item.error_type || `HTTP ${item.status_code}`);
  }
  return el("span", { class: "badge good" }, "OK");
}

function row(item) {
  const took = item.completed_at ? `${(item.completed_at - item.created_at).toFixed(2)} s` : "";
  return el(
    "tr",
    { dataset: { requestId: item.request_id } },
    el("td", {}, formatTime(item.created_at)),
    el("td", {}, el("code", {}, item.endpoint)),
    el("td", {}, badge(item)),
    el("td", { class: "num" }, took),
    el("td", {}, el("a", { href: item.playground_url }, item.request_id)),
  );
}

async function load(more = false) {
  const params = new URLSearchParams();
  if ($("filter-endpoint").value) params.set("endpoint", $("filter-endpoint").value);
  if ($("filter-status").value) params.set("status", $("filter-status").value);
  if (more && before !== null) params.set("before", String(before));
  const answer = await call("GET", `/ui/api/history?${params}`);
  const body = $("history").querySelector("tbody");
  const error = $("history-error");
  if (!more) body.replaceChildren();
  if (!answer.ok) {
    error.textContent = answer.status === 401 ? "Enter your API key above to see its requests." : errorText(answer.body);
    error.hidden = false;
    $("more").hidden = true;
    return;
  }
  error.hidden = true;
  answer.body.items.forEach((item) => body.append(row(item)));
  if (!more && !answer.body.items.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No requests yet.")));
  before = answer.body.next_before;
  $("more").hidden = before === null;
}

for (const id of config.endpoints) $("filter-endpoint").append(el("option", { value: id }, id));
const query = new URLSearchParams(location.search);
$("filter-endpoint").value = query.get("endpoint") || "";
$("filter-status").value = query.get("status") || "";
$("filters").addEventListener("change", () => {
  const params = new URLSearchParams();
  if ($("filter-endpoint").value) params.set("endpoint", $("filter-endpoint").value);
  if ($("filter-status").value) params.set("status", $("filter-status").value);
  history.replaceState(null, "", params.size ? `?${params}` : location.pathname);
  load();
});
$("more").addEventListener("click", () => load(true));
document.addEventListener("kiln:key", () => load());
load();
