// The compare page: endpoints, a base input (the first endpoint's form) and up to two varied inputs.
// Kiln checks and saves the comparison (`/ui/api/comparisons`, giving a permalink) and returns its
// cells; each cell is then submitted through fal's queue API like any request, and its request id
// recorded with the comparison. The grid shows each cell's image under its row and column labels,
// the table beside it each cell's provenance. `/compare/<id>` reopens a saved comparison; Run again
// makes a new one from the same form.
import { ApiError, buildForm, call, config, el, errorText, filesIn, watch } from "./kiln.js";

const $ = (id) => document.getElementById(id);
const endpointIds = Object.keys(config.endpoints);
let form = null;
let shown = null; // the comparison whose results are on the page

// -- the form ------------------------------------------------------------------------------------

function selected() {
  return [...document.querySelectorAll("#endpoint-list input:checked")].map((box) => box.value);
}

function drawEndpoints(chosen) {
  const list = $("endpoint-list");
  list.replaceChildren();
  for (const id of endpointIds) {
    const reason = config.endpoints[id].unavailable;
    const box = el("input", { type: "checkbox", value: id, checked: chosen.includes(id) });
    box.addEventListener("change", () => drawForm());
    list.append(
      el("label", { class: `endpoint-choice${reason ? " unavailable" : ""}`, title: reason || "" }, box, " ", el("code", {}, id),
        reason ? el("span", { class: "muted" }, " (unavailable)") : null),
    );
  }
}

function fieldsOf(endpoints) {
  const seen = new Map();
  for (const id of endpoints) for (const field of config.endpoints[id].fields) if (!seen.has(field.name)) seen.set(field.name, field);
  return [...seen.values()];
}

/** The base form is the first chosen endpoint's; values already typed are kept where names match. */
function drawForm(values) {
  const endpoints = selected();
  const kept = values || (form ? form.read({ all: true }).inputs : {});
  const fields = endpoints.length ? config.endpoints[endpoints[0]].fields : [];
  form = buildForm($("form-fields"), fields);
  form.setValues(kept);
  for (const row of document.querySelectorAll(".vary-row")) {
    const select = row.querySelector(".vary-name");
    const current = select.value;
    select.replaceChildren(el("option", { value: "" }, "(nothing)"));
    for (const field of fieldsOf(endpoints)) select.append(el("option", { value: field.name }, field.name));
    select.value = [...select.options].some((option) => option.value === current) ? current : "";
  }
}

function splitValues(text) {
  // commas outside brackets and quotes separate values, as in `kiln compare --vary`
  const values = [];
  let current = "";
  let depth = 0;
  let quote = "";
  for (const char of text) {
    if (quote) quote = char === quote ? "" : quote;
    else if (char === '"' || char === "'") quote = char;
    else if (char === "[" || char === "{") depth += 1;
    else if (char === "]" || char === "}") depth -= 1;
    else if (char === "," && depth === 0) {
      values.push(current.trim());
      current = "";
      continue;
    }
    current += char;
  }
  values.push(current.trim());
  // a data URI keeps the comma after its header
  const joined = [];
  for (const value of values) {
    if (joined.length && /^data:[^,]*$/.test(joined[joined.length - 1])) joined[joined.length - 1] += `,${value}`;
    else joined.push(value);
  }
  return joined.filter((value) => value !== "");
}

function readSpec() {
  const { inputs, errors } = form.read();
  const vary = [];
  for (const row of document.querySelectorAll(".vary-row")) {
    const name = row.querySelector(".vary-name").value;
    const values = splitValues(row.querySelector(".vary-values").value);
    if (name) vary.push({ name, values });
  }
  return { spec: { endpoints: selected(), inputs, vary }, errors };
}

function clearErrors() {
  form.clearErrors();
  for (const node of document.querySelectorAll(".vary-row .field-error, #endpoints-error")) node.textContent = "";
  $("form-error").hidden = true;
}

/** A 422 from `/ui/api/comparisons`, shown beside the input, vary row or endpoint list it names. */
function showSpecErrors(body, spec) {
  const general = [];
  for (const item of Array.isArray(body?.detail) ? body.detail : [{ loc: [], msg: errorText(body) }]) {
    const [, part, index] = item.loc || [];
    if (part === "inputs" && form.names.has(String(index))) form.showErrors({ [index]: [item.msg] });
    else if (part === "vary" && Number.isInteger(index) && spec.vary[index]) {
      const rows = [...document.querySelectorAll(".vary-row")].filter((row) => row.querySelector(".vary-name").value);
      rows[index].querySelector(".field-error").textContent = item.msg;
    } else if (part === "endpoints") $("endpoints-error").textContent = item.msg;
    else general.push(item.msg);
  }
  if (general.length) {
    $("form-error").textContent = general.join("; ");
    $("form-error").hidden = false;
  }
}

// -- the grid ------------------------------------------------------------------------------------

function drawGrid(comparison) {
  const rows = comparison.rows ? comparison.rows.labels : [""];
  const columns = comparison.columns ? comparison.columns.labels : [comparison.cells[0].column_label];
  const grid = $("grid");
  grid.replaceChildren();
  const head = el("tr", {}, el("th", { class: "corner" }, comparison.rows ? `${comparison.rows.name} \\ ${comparison.columns.name}` : ""));
  columns.forEach((label) => head.append(el("th", { scope: "col", class: "column-label" }, label)));
  grid.append(el("thead", {}, head));
  const body = el("tbody");
  rows.forEach((label, row) => {
    const line = el("tr", {}, el("th", { scope: "row", class: "row-label" }, label));
    columns.forEach((_, column) => line.append(el("td", { class: "cell pending", dataset: { row, column } }, el("span", { class: "muted" }, "waiting…"))));
    body.append(line);
  });
  grid.append(body);
  $("results").hidden = false;
}

function cellNode(cell) {
  return document.querySelector(`#grid td[data-row="${cell.row}"][data-column="${cell.column}"]`);
}

function fillCell(cell, outcome) {
  const node = cellNode(cell);
  node.classList.remove("pending");
  node.replaceChildren();
  if (outcome.error) {
    node.classList.add("error");
    node.append(el("div", { class: "cell-error" }, el("strong", {}, outcome.errorType || "error"), el("div", {}, outcome.error)));
    return;
  }
  const image = filesIn(outcome.result).find((file) => (file.content_type || "").startsWith("image/") || file.width);
  node.classList.add("done");
  if (image) node.append(el("a", { href: image.url, target: "_blank", rel: "noopener" }, el("img", { src: image.url, alt: `${cell.row_label} ${cell.column_label}` })));
  node.append(el("div", { class: "cell-caption muted" }, image && image.width ? `${image.width}×${image.height}` : "", " · ",
    el("a", { href: `/playground/${cell.endpoint}?request=${encodeURIComponent(cell.request_id)}` }, "open")));
}

const PROVENANCE_COLUMNS = ["cell", "endpoint", "request", "weights", "seed", "steps", "scheduler", "acceleration", "versions", "timings"];

/** The provenance fields a comparison sets side by side (`kiln compare` prints the same). */
function summary(provenance = {}) {
  const scheduler = provenance.scheduler;
  const acceleration = provenance.acceleration;
  const weights = Object.entries(provenance.weights || {})
    .map(([name, entry]) => `${name}@${String(entry.revision || "").slice(0, 12)}#${String(entry.digest || "").slice(0, 12)}`)
    .join(", ");
  return {
    endpoint: provenance.endpoint,
    weights,
    seed: provenance.seed,
    steps: provenance.num_inference_steps,
    scheduler: scheduler && typeof scheduler === "object" ? scheduler.name || scheduler.class : scheduler,
    acceleration: acceleration && typeof acceleration === "object" ? acceleration.level : acceleration,
    versions: Object.entries(provenance).filter(([key]) => key.endsWith("_version")).map(([key, value]) => `${key.replace(/_version$/, "")}=${value}`).join(" "),
    timings: Object.entries(provenance.timings || {}).map(([stage, seconds]) => `${stage}=${seconds}`).join(" "),
  };
}

function drawProvenance(comparison, outcomes) {
  const table = $("provenance");
  table.replaceChildren(el("thead", {}, el("tr", {}, PROVENANCE_COLUMNS.map((name) => el("th", {}, name)))));
  const body = el("tbody");
  comparison.cells.forEach((cell, index) => {
    const outcome = outcomes[index] || {};
    const fields = outcome.result ? summary(outcome.result.provenance) : { endpoint: cell.endpoint };
    const label = [cell.row_label, cell.column_label].filter(Boolean).join(" / ");
    const values = {
      ...fields,
      cell: label,
      request: cell.request_id || "",
      seed: fields.seed ?? "",
      steps: fields.steps ?? "",
    };
    if (outcome.error) values.timings = `error: ${outcome.errorType}`;
    body.append(el("tr", {}, PROVENANCE_COLUMNS.map((name) => el("td", {}, values[name] === undefined ? "" : String(values[name])))));
  });
  table.append(body);
}

/** The same shape as `kiln compare`'s manifest.json, for this comparison's cells. */
function manifest(comparison, outcomes) {
  return {
    url: location.origin,
    permalink: new URL(comparison.permalink, location.origin).href,
    endpoints: comparison.endpoints,
    inputs: comparison.inputs,
    rows: comparison.rows,
    columns: comparison.columns,
    cells: comparison.cells.map((cell, index) => {
      const outcome = outcomes[index] || {};
      return {
        ...cell,
        status: outcome.error ? "error" : "ok",
        error: outcome.error || null,
        error_type: outcome.errorType || null,
        images: outcome.result ? filesIn(outcome.result).map((file) => file.url) : [],
        provenance: outcome.result ? outcome.result.provenance : null,
      };
    }),
  };
}

/** Waits for every cell with a request and draws what each ends as. */
async function collect(comparison) {
  const outcomes = comparison.cells.map((cell) => (cell.request_id ? null : { error: cell.error || "not submitted", errorType: cell.error_type || "error" }));
  comparison.cells.forEach((cell, index) => outcomes[index] && fillCell(cell, outcomes[index]));
  let done = outcomes.filter(Boolean).length;
  const progress = () => ($("compare-state").textContent = `${done} of ${comparison.cells.length} cells done`);
  progress();
  await Promise.all(comparison.cells.map(async (cell, index) => {
    if (!cell.request_id) return;
    let outcome;
    try {
      await watch(cell.status_url, () => {});
      const result = await call("GET", cell.response_url);
      outcome = result.ok ? { result: result.body } : { error: errorText(result.body), errorType: new ApiError(result.status, result.body).errorType };
    } catch (error) {
      outcome = { error: error.status === 404 ? "the request is gone (past the server's retention?)" : error.message, errorType: error.errorType || "error" };
    }
    if (shown !== comparison) return;
    outcomes[index] = outcome;
    fillCell(cell, outcome);
    done += 1;
    progress();
  }));
  if (shown !== comparison) return;
  drawProvenance(comparison, outcomes);
  const download = $("download-manifest");
  download.hidden = false;
  download.onclick = () => {
    const blob = new Blob([JSON.stringify(manifest(comparison, outcomes), null, 2)], { type: "application/json" });
    el("a", { href: URL.createObjectURL(blob), download: "manifest.json" }).click();
  };
  $("compare-state").textContent = `${comparison.cells.length} cells done`;
}

function show(comparison) {
  shown = comparison;
  const link = $("permalink");
  link.href = comparison.permalink;
  link.textContent = `Permalink: ${comparison.permalink}`;
  link.hidden = false;
  $("download-manifest").hidden = true;
  drawGrid(comparison);
  drawProvenance(comparison, []);
  $("run-compare").textContent = "Run again";
  $("base-input").open = false;
  $("results").scrollIntoView({ block: "start" });
  return collect(comparison);
}

async function run(event) {
  event.preventDefault();
  clearErrors();
  await form.settled();
  const { spec, errors } = readSpec();
  if (Object.keys(errors).length) {
    form.showErrors(errors);
    return;
  }
  if (!spec.endpoints.length) {
    $("endpoints-error").textContent = "choose at least one endpoint";
    return;
  }
  $("run-compare").disabled = true;
  $("compare-state").textContent = "saving…";
  try {
    const created = await call("POST", "/ui/api/comparisons", spec);
    if (!created.ok) {
      if (created.status === 422) showSpecErrors(created.body, spec);
      else {
        $("form-error").textContent = created.status === 401 ? "This server needs an API key: enter it above." : errorText(created.body);
        $("form-error").hidden = false;
      }
      $("compare-state").textContent = "";
      return;
    }
    const comparison = created.body;
    history.pushState(null, "", comparison.permalink);
    $("compare-state").textContent = "submitting…";
    const submitted = await Promise.all(comparison.cells.map(async (cell) => {
      const answer = await call("POST", `/queue/${cell.endpoint}`, cell.inputs);
      if (answer.ok) return { request_id: answer.body.request_id };
      const error = new ApiError(answer.status, answer.body);
      return { request_id: null, error: error.message, error_type: error.errorType, http_status: answer.status };
    }));
    const recorded = await call("PUT", `/ui/api/comparisons/${comparison.id}/requests`, { cells: submitted });
    if (!recorded.ok) throw new ApiError(recorded.status, recorded.body);
    await show(recorded.body);
  } catch (error) {
    $("form-error").textContent = error.message;
    $("form-error").hidden = false;
  } finally {
    $("run-compare").disabled = false;
  }
}

/** `/compare/<id>`: the saved comparison's form and its cells' results (while the server keeps them). */
async function reopen(id) {
  const found = await call("GET", `/ui/api/comparisons/${encodeURIComponent(id)}`);
  if (!found.ok) {
    $("form-error").textContent = found.status === 401 ? "Enter your API key above to open this comparison." : `Comparison ${id}: ${errorText(found.body)}`;
    $("form-error").hidden = false;
    return;
  }
  const comparison = found.body;
  drawEndpoints(comparison.spec.endpoints);
  drawForm(comparison.spec.inputs);
  comparison.spec.vary.forEach((vary, index) => {
    $(`vary-name-${index}`).value = vary.name;
    $(`vary-values-${index}`).value = vary.values.join(", ");
  });
  await show(comparison);
}

const preferred = config.selected.filter((id) => endpointIds.includes(id));
const firstAvailable = endpointIds.find((id) => !config.endpoints[id].unavailable);
drawEndpoints(preferred.length ? preferred : firstAvailable ? [firstAvailable] : []);
drawForm();
$("compare-form").addEventListener("submit", run);
if (config.comparison_id) reopen(config.comparison_id);
document.addEventListener("kiln:key", () => config.comparison_id && !shown && reopen(config.comparison_id));
