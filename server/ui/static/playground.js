// The playground: the endpoint's form, submitted through fal's queue API; while it runs, queue
// position, a progress bar from the step logs, the logs and cancel; when done, the images, the JSON
// output with provenance, downloads and copy-as-code. `?request=<id>` reopens one of the key's
// requests with its inputs restored.
import {
  ApiError, buildForm, call, config, copyText, el, fieldErrors, filesIn, progressOf, snippets, watch, withCode,
} from "./kiln.js";

const $ = (id) => document.getElementById(id);
const playground = buildForm($("form-fields"), config.fields);
// the request on show: a newer submit or reopen makes an older one's updates stale
let current = null;

function showFormError(message) {
  const box = $("form-error");
  box.replaceChildren(...(message ? withCode(message) : []));
  box.hidden = !message;
}

function showRunError(error) {
  const box = $("run-error");
  if (!error) {
    box.hidden = true;
    box.replaceChildren();
    return;
  }
  box.hidden = false;
  box.replaceChildren(el("strong", {}, error.errorType || "error"), ": ", ...withCode(error.message));
}

function setStatus(status, position) {
  const badge = $("run-status");
  badge.textContent = status;
  badge.className = `badge ${status === "COMPLETED" ? "good" : status === "ERROR" ? "bad" : "busy"}`;
  $("run-position").textContent = position === undefined || position === null ? "" : `position ${position} in the queue`;
}

function showLogs(logs) {
  $("logs").textContent = logs.map((line) => `${line.timestamp?.slice(11, 23) || ""} ${line.level} ${line.message}`).join("\n");
}

function setProgress(status) {
  const bar = $("progress");
  const fraction = status.status === "COMPLETED" ? 1 : status.status === "IN_QUEUE" ? 0 : progressOf(status.logs || []);
  if (fraction === null) bar.removeAttribute("value");
  else bar.value = fraction;
  bar.dataset.state = status.status;
}

function showSnippets(inputs) {
  const code = snippets(config.base_url, config.endpoint, inputs);
  $("snippet-python").textContent = code.python;
  $("snippet-js").textContent = code.js;
  $("code").hidden = false;
}

function showResult(body) {
  const images = $("images");
  images.replaceChildren();
  for (const file of filesIn(body)) {
    const isImage = (file.content_type || "").startsWith("image/") || file.width;
    const name = file.file_name || "result";
    images.append(
      el(
        "figure",
        { class: "result-image" },
        isImage ? el("a", { href: file.url, target: "_blank", rel: "noopener" }, el("img", { src: file.url, alt: name })) : null,
        el(
          "figcaption",
          {},
          file.width ? `${file.width}×${file.height} · ` : "",
          el("a", { href: file.url, download: name }, "download"),
        ),
      ),
    );
  }
  $("json").textContent = JSON.stringify(body, null, 2);
  $("result-json").hidden = false;
}

function resetRun() {
  $("run").hidden = false;
  $("run").dataset.phase = "running";
  $("images").replaceChildren();
  $("json").textContent = "";
  $("result-json").open = false;
  $("result-json").hidden = true;
  $("logs").textContent = "";
  showRunError(null);
  setStatus("SUBMITTING");
  $("progress").value = 0;
  $("progress").dataset.state = "";
}

/** Follows a submitted (or reopened) request to its end and shows the outcome. */
async function follow(queued) {
  current = queued;
  $("run-link").textContent = queued.request_id;
  $("run-link").href = `?request=${encodeURIComponent(queued.request_id)}`;
  $("cancel").hidden = false;
  try {
    const final = await watch(queued.status_url, (status) => {
      if (current !== queued) return;
      setStatus(status.status, status.queue_position);
      setProgress(status);
      showLogs(status.logs || []);
    });
    if (current !== queued) return;
    setProgress(final);
    const result = await call("GET", queued.response_url);
    if (result.ok) {
      setStatus("COMPLETED");
      showResult(result.body);
    } else {
      setStatus("ERROR");
      const error = new ApiError(result.status, result.body);
      showRunError(error);
      $("json").textContent = JSON.stringify(result.body, null, 2);
      $("result-json").hidden = false;
      if (result.status === 422) playground.showErrors(fieldErrors(result.body, playground.names));
    }
  } catch (error) {
    setStatus("ERROR");
    showRunError(error);
  } finally {
    if (current === queued) {
      $("cancel").hidden = true;
      $("run").dataset.phase = "done";
    }
  }
}

async function submit(event) {
  event.preventDefault();
  playground.clearErrors();
  showFormError("");
  await playground.settled();
  const { inputs, errors } = playground.read();
  if (Object.keys(errors).length) {
    playground.showErrors(errors);
    return;
  }
  $("submit").disabled = true;
  resetRun();
  try {
    const submitted = await call("POST", `/queue/${config.endpoint}`, inputs);
    if (!submitted.ok) {
      $("run").hidden = true;
      const byField = submitted.status === 422 ? fieldErrors(submitted.body, playground.names) : {};
      playground.showErrors(byField);
      const general = submitted.status === 422 ? byField[""] : null;
      const message = submitted.status === 401
        ? "This server needs an API key: enter it above."
        : general ? general.join("; ") : submitted.status === 422 ? "" : new ApiError(submitted.status, submitted.body).message;
      showFormError(message);
      return;
    }
    history.replaceState(null, "", `?request=${encodeURIComponent(submitted.body.request_id)}`);
    showSnippets(inputs);
    await follow(submitted.body);
  } catch (error) {
    showFormError(error.message);
  } finally {
    $("submit").disabled = false;
  }
}

async function cancel() {
  if (!current) return;
  const answer = await call("PUT", current.cancel_url);
  $("run-position").textContent = answer.body?.status || `cancel: HTTP ${answer.status}`;
}

/** `?request=<id>`: the key's request with its inputs restored, and its outcome. */
async function reopen(requestId) {
  const found = await call("GET", `/ui/api/requests/${encodeURIComponent(requestId)}`);
  if (!found.ok) {
    showFormError(found.status === 401 ? "Enter your API key above to reopen this request." : `Request ${requestId}: ${new ApiError(found.status, found.body).message}`);
    return;
  }
  if (found.body.endpoint !== config.endpoint) {
    location.replace(`/playground/${found.body.endpoint}?request=${encodeURIComponent(requestId)}`);
    return;
  }
  playground.reset();
  playground.setValues(found.body.payload);
  resetRun();
  showSnippets(playground.read().inputs);
  await follow(found.body);
}

$("run-form").addEventListener("submit", submit);
$("reset").addEventListener("click", () => {
  playground.reset();
  playground.clearErrors();
});
$("cancel").addEventListener("click", cancel);
for (const tab of document.querySelectorAll("[data-tab]")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll("[data-tab]")) other.setAttribute("aria-selected", String(other === tab));
    $("snippet-python").hidden = tab.dataset.tab !== "python";
    $("snippet-js").hidden = tab.dataset.tab !== "js";
  });
}
$("copy").addEventListener("click", async () => {
  const shown = [...document.querySelectorAll(".snippet")].find((node) => !node.hidden);
  $("copy").textContent = (await copyText(shown.textContent)) ? "Copied" : "Copy failed";
  setTimeout(() => ($("copy").textContent = "Copy"), 1500);
});

const requested = new URLSearchParams(location.search).get("request");
if (requested) reopen(requested);
document.addEventListener("kiln:key", () => {
  const again = new URLSearchParams(location.search).get("request");
  if (again && !current) reopen(again);
});
