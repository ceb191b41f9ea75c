// What every Kiln page shares: the API key (kept in this browser's localStorage, sent as
// `Authorization: Key ...` by fetch, never a cookie), calls to Kiln's public API, uploads, watching a
// request, the form generated from an endpoint's input schema, and the copy-as-code snippets.
// Plain ES modules: no build step, no dependencies, nothing loaded from outside this server.

const KEY_STORAGE = "kiln.apiKey";

export const config = JSON.parse(document.getElementById("page-config")?.textContent || "{}");

// -- DOM -----------------------------------------------------------------------------------------

/** An element with attributes (`class`, `dataset`, properties) and children (strings become text). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Text with its `backticked` parts (commands) as <code>, built without innerHTML. */
export function withCode(text) {
  return String(text).split("`").map((part, index) => (index % 2 ? el("code", {}, part) : part));
}

// -- the key -------------------------------------------------------------------------------------

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Key ${key}` } : { ...extra };
}

function initKeyBox() {
  const form = document.getElementById("key-form");
  if (!form) return;
  const input = document.getElementById("api-key");
  const state = document.getElementById("key-state");
  const required = document.body.dataset.keysRequired === "true";
  const show = () => {
    input.value = apiKey();
    state.textContent = apiKey() ? "kept in this browser" : required ? "enter your key" : "";
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    show();
    document.dispatchEvent(new CustomEvent("kiln:key"));
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    show();
    document.dispatchEvent(new CustomEvent("kiln:key"));
  });
  show();
}

// -- calls ---------------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, body) {
    super(errorText(body) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.errorType = (body && body.error_type) || (status === 422 ? "validation_error" : `http_${status}`);
  }
}

/** `detail` as one line: FastAPI's 422 list or fal's string. */
export function errorText(body) {
  if (!body) return "";
  const detail = typeof body === "object" && "detail" in body ? body.detail : body;
  if (Array.isArray(detail)) {
    return detail
      .map((item) => `${(item.loc || []).slice(1).join(".")}: ${item.msg || ""}`)
      .join("; ");
  }
  return typeof detail === "string" ? detail : JSON.stringify(detail);
}

/** fetch with the key; resolves to {status, ok, body} whatever the status, body parsed as JSON. */
export async function call(method, url, body) {
  const init = { method, headers: authHeaders(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(url, init);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { detail: text };
  }
  return { status: response.status, ok: response.ok, body: parsed };
}

/** Uploads a file through Kiln's storage API (fal's initiate + PUT); resolves to its URL. */
export async function upload(file) {
  const type = file.type || "application/octet-stream";
  const target = await call("POST", "/rest/storage/upload/initiate", {
    file_name: file.name || "pasted.png",
    content_type: type,
  });
  if (!target.ok) throw new ApiError(target.status, target.body);
  const stored = await fetch(target.body.upload_url, { method: "PUT", body: file, headers: { "Content-Type": type } });
  if (!stored.ok) {
    let body = null;
    try { body = await stored.json(); } catch { body = { detail: stored.statusText }; }
    throw new ApiError(stored.status, body);
  }
  return target.body.file_url;
}

/**
 * Follows a request to COMPLETED, calling `onStatus({status, queue_position, logs})` with all logs so
 * far. Reads fal's status stream with fetch (EventSource cannot send the key); if the stream is cut
 * off it polls the status URL instead. Resolves to the last status body.
 */
export async function watch(statusUrl, onStatus) {
  let logs = [];
  try {
    const response = await fetch(`${statusUrl}/stream?logs=1`, { headers: authHeaders({ Accept: "text/event-stream" }) });
    if (response.ok && response.body) {
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = event
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).trimStart())
            .join("\n");
          if (!data) continue;
          const status = JSON.parse(data);
          logs = logs.concat(status.logs || []);
          onStatus({ ...status, logs });
          if (status.status === "COMPLETED") {
            reader.cancel().catch(() => {});
            return { ...status, logs };
          }
        }
      }
    }
  } catch {
    // the stream failed: poll instead
  }
  for (;;) {
    const polled = await call("GET", `${statusUrl}?logs=1`);
    if (polled.status !== 200 && polled.status !== 202) throw new ApiError(polled.status, polled.body);
    logs = polled.body.logs || logs;
    onStatus({ ...polled.body, logs });
    if (polled.body.status === "COMPLETED") return { ...polled.body, logs };
    await sleep(500);
  }
}

/** The fraction done from the newest `step i/n` log line; null when the endpoint logs no steps. */
export function progressOf(logs) {
  for (let index = logs.length - 1; index >= 0; index -= 1) {
    const match = /\bstep (\d+)\/(\d+)\b/.exec(logs[index].message || "");
    if (match && Number(match[2]) > 0) return Number(match[1]) / Number(match[2]);
  }
  return null;
}

/** Every fal Image/File object in an output: `{url, content_type, width, height, file_name}`. */
export function filesIn(value, found = []) {
  if (Array.isArray(value)) value.forEach((item) => filesIn(item, found));
  else if (value && typeof value === "object") {
    if (typeof value.url === "string" && ("content_type" in value || "width" in value)) found.push(value);
    else for (const [name, item] of Object.entries(value)) if (name !== "provenance") filesIn(item, found);
  }
  return found;
}

/** A 422 body's entries by input name (`loc` ["body", name, ...]); the rest under "". */
export function fieldErrors(body, known) {
  const errors = {};
  const detail = body && body.detail;
  const items = Array.isArray(detail) ? detail : [{ loc: [], msg: errorText(body) }];
  for (const item of items) {
    const loc = item.loc || [];
    const name = loc[0] === "body" && known.has(String(loc[1])) ? String(loc[1]) : "";
    const where = name ? loc.slice(2).join(".") : loc.slice(1).join(".");
    const text = where ? `${where}: ${item.msg}` : item.msg;
    (errors[name] ||= []).push(text);
  }
  return errors;
}

// -- the form generated from an endpoint's input schema ------------------------------------------

const NUMBER_KINDS = new Set(["integer", "number"]);

function isEmpty(value) {
  return value === undefined || value === null || value === "";
}

function sameValue(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function imageWidget(field, pending, onChange) {
  const url = el("input", {
    type: "text",
    class: "image-url",
    name: field.name,
    placeholder: "https://…, a data: URI, or choose / paste a file",
    spellcheck: "false",
  });
  const file = el("input", { type: "file", accept: "image/*", class: "image-file" });
  const preview = el("img", { class: "preview", alt: "", hidden: true });
  const note = el("span", { class: "muted upload-note" });
  const box = el("div", { class: "image-input", tabindex: "0" }, url, el("div", { class: "image-row" }, file, note), preview);
  const refresh = () => {
    const value = url.value.trim();
    preview.hidden = !value;
    if (value) preview.src = value;
    onChange();
  };
  const take = async (blob) => {
    note.textContent = "uploading…";
    const job = upload(blob);
    pending.add(job);
    try {
      url.value = await job;
      note.textContent = `uploaded ${blob.name || "pasted image"}`;
    } catch (error) {
      note.textContent = `upload failed: ${error.message}`;
    } finally {
      pending.delete(job);
    }
    refresh();
  };
  file.addEventListener("change", () => file.files[0] && take(file.files[0]));
  box.addEventListener("paste", (event) => {
    const item = [...(event.clipboardData?.items || [])].find((entry) => entry.type.startsWith("image/"));
    if (item) {
      event.preventDefault();
      take(item.getAsFile());
    }
  });
  url.addEventListener("change", refresh);
  return {
    node: box,
    get: () => url.value.trim(),
    set: (value) => {
      url.value = value ?? "";
      refresh();
    },
    takeFile: take,
  };
}

function imagesWidget(field, pending) {
  const list = el("div", { class: "image-list" });
  const widgets = [];
  const add = el("button", { type: "button", class: "add-image" }, "+ image");
  const sync = () => {
    add.disabled = field.max_items !== undefined && widgets.length >= field.max_items;
  };
  const push = (value = "") => {
    const widget = imageWidget(field, pending, () => {});
    const remove = el("button", { type: "button", class: "remove-image" }, "remove");
    const row = el("div", { class: "image-list-item" }, widget.node, remove);
    remove.addEventListener("click", () => {
      widgets.splice(widgets.indexOf(widget), 1);
      row.remove();
      sync();
    });
    widgets.push(widget);
    list.append(row);
    widget.set(value);
    sync();
  };
  add.addEventListener("click", () => push());
  const set = (values) => {
    widgets.length = 0;
    list.replaceChildren();
    const items = Array.isArray(values) ? values : [];
    const count = Math.max(items.length, field.min_items || 1);
    for (let index = 0; index < count; index += 1) push(items[index] || "");
  };
  return { node: el("div", {}, list, add), get: () => widgets.map((widget) => widget.get()).filter(Boolean), set };
}

function control(field, pending) {
  const id = `field-${field.name}`;
  if (field.kind === "boolean") {
    const input = el("input", { type: "checkbox", id, name: field.name });
    return { node: input, input, get: () => input.checked, set: (value) => (input.checked = Boolean(value)) };
  }
  if (NUMBER_KINDS.has(field.kind)) {
    const input = el("input", {
      type: "number",
      id,
      name: field.name,
      step: field.kind === "integer" ? "1" : "any",
      min: field.minimum ?? field.exclusive_minimum,
      max: field.maximum ?? field.exclusive_maximum,
      placeholder: field.nullable || !field.required ? "(not set)" : "",
    });
    return {
      node: input,
      input,
      get: () => (input.value.trim() === "" ? undefined : Number(input.value)),
      set: (value) => (input.value = isEmpty(value) ? "" : String(value)),
    };
  }
  if (field.kind === "enum") {
    const input = el("select", { id, name: field.name });
    const optional = field.nullable || (!field.required && !field.has_default);
    if (optional) input.append(el("option", { value: "" }, "(not set)"));
    field.options.forEach((option, index) => input.append(el("option", { value: String(index) }, String(option))));
    return {
      node: input,
      input,
      get: () => (input.value === "" ? undefined : field.options[Number(input.value)]),
      set: (value) => {
        const index = field.options.findIndex((option) => sameValue(option, value));
        input.value = index >= 0 ? String(index) : optional ? "" : "0";
      },
    };
  }
  if (field.kind === "image") {
    const widget = imageWidget(field, pending, () => {});
    widget.node.id = id;
    return { node: widget.node, get: () => widget.get() || undefined, set: widget.set, takeFile: widget.takeFile };
  }
  if (field.kind === "images") {
    const widget = imagesWidget(field, pending);
    widget.node.id = id;
    return { node: widget.node, get: () => widget.get(), set: widget.set };
  }
  if (field.kind === "strings") {
    const input = el("textarea", { id, name: field.name, rows: 3, placeholder: "one per line" });
    return {
      node: input,
      input,
      get: () => {
        const lines = input.value.split("\n").map((line) => line.trim()).filter(Boolean);
        return lines.length ? lines : undefined;
      },
      set: (value) => (input.value = Array.isArray(value) ? value.join("\n") : ""),
    };
  }
  if (field.kind === "json") {
    // JSON, or a bare word as a string; a union's named values are suggested
    const suggestions = field.options.length
      ? el("datalist", { id: `${id}-options` }, field.options.map((option) => el("option", { value: String(option) })))
      : null;
    const input = suggestions
      ? el("input", { type: "text", id, name: field.name, list: `${id}-options`, class: "json-input", spellcheck: "false" })
      : el("textarea", { id, name: field.name, rows: 2, class: "json-input", spellcheck: "false" });
    const parse = (text) => {
      try {
        return JSON.parse(text);
      } catch (error) {
        if (/^[\w.:-]+$/.test(text.trim())) return text.trim();
        throw error;
      }
    };
    return {
      node: suggestions ? el("div", {}, input, suggestions) : input,
      input,
      get: () => (input.value.trim() === "" ? undefined : parse(input.value)),
      set: (value) => {
        if (value === undefined || value === null) input.value = "";
        else if (typeof value === "string" && /^[\w.:-]+$/.test(value) && !/^(true|false|null|-?\d[\d.e+-]*)$/.test(value)) input.value = value;
        else input.value = JSON.stringify(value);
      },
    };
  }
  const multiline = field.kind === "text";
  const input = el(multiline ? "textarea" : "input", {
    id,
    name: field.name,
    type: multiline ? undefined : "text",
    rows: multiline ? 3 : undefined,
    maxlength: field.max_length,
    spellcheck: multiline ? "true" : "false",
  });
  return {
    node: input,
    input,
    get: () => (input.value === "" ? undefined : input.value),
    set: (value) => (input.value = value ?? ""),
  };
}

/** The checks the schema states, run before submitting (the server checks them again). */
function check(field, value) {
  if (isEmpty(value) || (Array.isArray(value) && value.length === 0)) {
    return field.required ? "required" : null;
  }
  if (NUMBER_KINDS.has(field.kind)) {
    if (Number.isNaN(value)) return "must be a number";
    if (field.kind === "integer" && !Number.isInteger(value)) return "must be a whole number";
    if (field.minimum !== undefined && value < field.minimum) return `must be ≥ ${field.minimum}`;
    if (field.maximum !== undefined && value > field.maximum) return `must be ≤ ${field.maximum}`;
    if (field.exclusive_minimum !== undefined && value <= field.exclusive_minimum) return `must be > ${field.exclusive_minimum}`;
    if (field.exclusive_maximum !== undefined && value >= field.exclusive_maximum) return `must be < ${field.exclusive_maximum}`;
  }
  if (typeof value === "string") {
    if (field.pattern && !new RegExp(field.pattern).test(value)) return `must match ${field.pattern}`;
    if (field.max_length !== undefined && value.length > field.max_length) return `at most ${field.max_length} characters`;
  }
  if (Array.isArray(value)) {
    if (field.min_items !== undefined && value.length < field.min_items) return `at least ${field.min_items} item(s)`;
    if (field.max_items !== undefined && value.length > field.max_items) return `at most ${field.max_items} item(s)`;
  }
  return null;
}

/**
 * Draws one control per field into `container` (required fields first, as the schema description
 * orders them) with the defaults filled in, and returns the form's handle.
 */
export function buildForm(container, fields) {
  const pending = new Set();
  const controls = new Map();
  container.replaceChildren();
  for (const field of fields) {
    const made = control(field, pending);
    const error = el("div", { class: "field-error", role: "alert", dataset: { errorFor: field.name } });
    const label = el(
      "label",
      { for: `field-${field.name}` },
      field.title,
      field.required ? el("span", { class: "required", title: "required" }, " *") : null,
    );
    const limits = NUMBER_KINDS.has(field.kind) && (field.minimum !== undefined || field.maximum !== undefined)
      ? el("span", { class: "limits muted" }, ` ${field.minimum ?? "…"} – ${field.maximum ?? "…"}`)
      : null;
    const wrapper = el(
      "div",
      { class: `field kind-${field.kind}`, dataset: { field: field.name } },
      field.kind === "boolean" ? el("div", { class: "check" }, made.node, label) : [label, limits, made.node],
      field.description ? el("div", { class: "help muted" }, field.description) : null,
      error,
    );
    container.append(wrapper);
    controls.set(field.name, { field, made, error, wrapper });
  }
  const form = {
    fields,
    names: new Set(fields.map((field) => field.name)),
    reset() {
      for (const { field, made } of controls.values()) made.set(field.has_default ? field.default : undefined);
    },
    setValues(values) {
      for (const { field, made } of controls.values()) {
        if (field.name in values) made.set(values[field.name]);
      }
    },
    /** {inputs, errors}: inputs holds required fields and the ones that differ from their defaults. */
    read({ all = false } = {}) {
      const inputs = {};
      const errors = {};
      for (const { field, made } of controls.values()) {
        let value;
        try {
          value = made.get();
        } catch (error) {
          errors[field.name] = [`not valid JSON: ${error.message}`];
          continue;
        }
        const problem = check(field, value);
        if (problem) {
          errors[field.name] = [problem];
          continue;
        }
        if (isEmpty(value) || (Array.isArray(value) && value.length === 0 && !field.required)) continue;
        if (!all && !field.required && field.has_default && sameValue(value, field.default)) continue;
        inputs[field.name] = value;
      }
      return { inputs, errors };
    },
    async settled() {
      while (pending.size) await Promise.allSettled([...pending]);
    },
    showErrors(errors) {
      for (const [name, messages] of Object.entries(errors)) {
        const entry = controls.get(name);
        if (!entry) continue;
        entry.error.replaceChildren(...withCode(messages.join("; ")));
        entry.wrapper.classList.add("invalid");
      }
      const first = Object.keys(errors).map((name) => controls.get(name)).find(Boolean);
      first?.wrapper.scrollIntoView({ block: "center" });
    },
    clearErrors() {
      for (const { error, wrapper } of controls.values()) {
        error.textContent = "";
        wrapper.classList.remove("invalid");
      }
    },
    control: (name) => controls.get(name),
  };
  form.reset();
  return form;
}

// -- copy as code --------------------------------------------------------------------------------

function pyLiteral(value, indent = 0) {
  const pad = " ".repeat(indent + 4);
  const close = " ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return Number.isFinite(value) ? JSON.stringify(value) : "None";
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((item) => pad + pyLiteral(item, indent + 4)).join(",\n")},\n${close}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([key, item]) => `${pad}${JSON.stringify(key)}: ${pyLiteral(item, indent + 4)}`).join(",\n")},\n${close}}`;
}

/** fal-client (Python) and @fal-ai/client (JS) programs that run `inputs` on `endpoint` at `base`. */
export function snippets(base, endpoint, inputs) {
  const python = `# pip install fal-client; export FAL_KEY=<your Kiln API key>
import json
import os

import fal_client
import fal_client.client as fc

# point the client at Kiln instead of fal (its URL settings are module globals)
base = ${JSON.stringify(base)}
fc.QUEUE_URL_FORMAT, fc.RUN_URL_FORMAT = f"{base}/queue/", f"{base}/run/"
fc.REST_URL, fc.CDN_URL = f"{base}/rest", f"{base}/cdn"

client = fal_client.SyncClient(key=os.environ["FAL_KEY"])
result = client.subscribe(
    ${JSON.stringify(endpoint)},
    arguments=${pyLiteral(inputs, 4)},
    with_logs=True,
)
print(json.dumps(result, indent=2))
`;
  const input = JSON.stringify(inputs, null, 2).replace(/\n/g, "\n  ");
  const js = `// npm install @fal-ai/client; FAL_KEY=<your Kiln API key> node run.mjs
import { createFalClient } from "@fal-ai/client";

// every call goes through Kiln's implementation of fal's proxy protocol
const fal = createFalClient({
  credentials: process.env.FAL_KEY,
  proxyUrl: { url: ${JSON.stringify(`${base}/api/fal/proxy`)}, when: "always" },
});
const result = await fal.subscribe(${JSON.stringify(endpoint)}, {
  input: ${input},
  logs: true,
});
console.log(JSON.stringify(result.data, null, 2));
`;
  return { python, js };
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = el("textarea", { class: "offscreen" });
    area.value = text;
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    return copied;
  }
}

// -- shown on every page -------------------------------------------------------------------------

export function formatTime(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

initKeyBox();
