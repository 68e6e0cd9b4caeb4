// Filters: the facets, the range pickers and the dedup toggle, and the server's JSON filter they make.

import { refine } from "./results.js";
import { els, state } from "./state.js";

// -- filters: facets and ranges, as the server's JSON filter -----------------------------------------

function rangeTypes() {
  const model = currentModel();
  return (model && model.ranges) || {};
}

// A range input's value as the server reads it: a number, a date as is, a datetime-local (which has no
// zone) as UTC, the zone the server's timestamps are shown in.
function boundValue(column, text) {
  const info = rangeTypes()[column];
  const type = info ? info.type : "number";
  if (type === "number") return Number(text);
  if (type === "timestamp") return text.length === 16 ? `${text}:00Z` : `${text}Z`;
  return text;
}

function isListColumn(column) {
  if (state.listColumns.has(column)) return true;
  // Before any result is seen: a column whose values' counts add up to more than its rows holds lists.
  const model = currentModel();
  const values = model && model.filters && model.filters[column];
  const rows = model && model.index ? model.index.rows : Infinity;
  return Boolean(values) && values.reduce((sum, v) => sum + v.count, 0) > rows;
}

function rangeActive(range) { return range && (range.min !== "" || range.max !== ""); }

export function filterExpression() {
  const parts = [];
  for (const [column, values] of Object.entries(state.facets)) {
    if (!values.length) continue;
    // Several values of one column: any of them. (`in` would do for a list column too; containsAny
    // says what is meant.)
    const op = isListColumn(column) ? "containsAny" : "in";
    parts.push({ field: column, [op]: values.slice() });
  }
  for (const [column, range] of Object.entries(state.ranges)) {
    if (!rangeActive(range)) continue;
    const leaf = { field: column }; // both bounds in one leaf: the server ANDs them
    if (range.min !== "") leaf.gte = boundValue(column, range.min);
    if (range.max !== "") leaf.lte = boundValue(column, range.max);
    parts.push(leaf);
  }
  if (!parts.length) return null;
  return parts.length === 1 ? parts[0] : { and: parts };
}

export function filtersActive() {
  return Object.values(state.facets).some((v) => v.length) || Object.values(state.ranges).some(rangeActive);
}

export function describeFilters() {
  const words = [];
  for (const [column, values] of Object.entries(state.facets)) {
    if (values.length) words.push(`${column}: ${values.join(" or ")}`);
  }
  for (const [column, range] of Object.entries(state.ranges)) {
    if (range.min !== "" && range.max !== "") words.push(`${column} ${range.min}–${range.max}`);
    else if (range.min !== "") words.push(`${column} ≥ ${range.min}`);
    else if (range.max !== "") words.push(`${column} ≤ ${range.max}`);
  }
  return words.join(", ");
}

// -- the controls: facets and ranges, and the form following the state ----------------------------------

function currentModel() {
  return state.models && state.models.models.find((m) => m.modelVersion === state.version);
}

function facetGroup(column) {
  let group = els.filters.querySelector(`.filter-group[data-column="${CSS.escape(column)}"]`);
  if (group) return group;
  group = document.createElement("div");
  group.className = "filter-group";
  group.dataset.column = column;
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", `Filter by ${column}`);
  const label = document.createElement("span");
  label.className = "filter-label";
  label.textContent = column;
  group.appendChild(label);
  els.filters.appendChild(group);
  return group;
}

function facetBox(column, value, count) {
  const chip = document.createElement("label");
  chip.className = "chip";
  chip.dataset.column = column;
  chip.dataset.value = value;
  if (count != null) chip.title = `${count} images`;
  const box = document.createElement("input");
  box.type = "checkbox";
  box.value = value;
  box.addEventListener("change", () => toggleFacet(column, value, box.checked));
  chip.append(box, document.createTextNode(value));
  return chip;
}

// Built once per version: rebuilding on every change would take the keyboard focus from the checkbox.
export function renderFilters() {
  els.filters.replaceChildren();
  const model = currentModel();
  for (const [column, values] of Object.entries((model && model.filters) || {})) {
    const group = facetGroup(column);
    for (const { value, count } of values) group.appendChild(facetBox(column, value, count));
  }
}

export function syncFacets() {
  for (const [column, values] of Object.entries(state.facets)) {
    for (const value of values) {
      // A value chosen from a result's tag or a link may be beyond the values listed: list it first.
      const selector = `.chip[data-column="${CSS.escape(column)}"][data-value="${CSS.escape(value)}"]`;
      if (!els.filters.querySelector(selector)) {
        const group = facetGroup(column);
        group.insertBefore(facetBox(column, value, null), group.children[1] || null);
      }
    }
  }
  for (const chip of els.filters.querySelectorAll(".chip")) {
    const chosen = (state.facets[chip.dataset.column] || []).includes(chip.dataset.value);
    chip.querySelector("input").checked = chosen;
    chip.classList.toggle("on", chosen);
  }
}

export function toggleFacet(column, value, on) {
  const values = state.facets[column] || [];
  const has = values.includes(value);
  if (on === undefined) on = !has;
  if (on && !has) state.facets[column] = [...values, value];
  if (!on && has) state.facets[column] = values.filter((v) => v !== value);
  if (state.facets[column] && !state.facets[column].length) delete state.facets[column];
  syncFacets();
  refine();
}

// A server's min or max as a value of the input's type.
function inputValue(type, value) {
  if (value == null) return "";
  if (type === "number") return String(value);
  if (type === "date") return String(value).slice(0, 10);
  // timestamp -> datetime-local in UTC (a time without zone is read as UTC too)
  const text = String(value);
  const zoned = /([zZ]|[+-]\d\d:?\d\d)$/.test(text) ? text : `${text}Z`;
  const date = new Date(zoned);
  return isNaN(date) ? "" : date.toISOString().slice(0, 16);
}

function rangeInput(column, info, bound) {
  const type = { number: "number", date: "date", timestamp: "datetime-local" }[info.type] || "number";
  const label = document.createElement("label");
  label.className = "bound";
  const name = document.createElement("span");
  name.className = "visually-hidden";
  name.textContent = `${column} ${bound === "min" ? "from" : "to"}${info.type === "timestamp" ? " (UTC)" : ""}`;
  const input = document.createElement("input");
  input.type = type;
  input.dataset.column = column;
  input.dataset.bound = bound;
  if (type === "number") input.step = "any";
  const min = inputValue(info.type, info.min), max = inputValue(info.type, info.max);
  if (min) input.min = min;
  if (max && info.type !== "timestamp") input.max = max; // a minute's truncation would cut the last one
  input.placeholder = bound === "min" ? min : max;
  // `change`, not `input`: a search per finished value, not per keystroke.
  input.addEventListener("change", () => { if (readRanges()) refine(); });
  label.append(name, input);
  return label;
}

export function renderRanges() {
  els.ranges.replaceChildren();
  for (const [column, info] of Object.entries(rangeTypes())) {
    const group = document.createElement("div");
    group.className = "range";
    group.dataset.column = column;
    group.dataset.type = info.type;
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", `${column} range`);
    const label = document.createElement("span");
    label.className = "filter-label";
    label.textContent = info.type === "timestamp" ? `${column} (UTC)` : column;
    const dash = document.createElement("span");
    dash.className = "dash";
    dash.setAttribute("aria-hidden", "true");
    dash.textContent = "–";
    group.append(label, rangeInput(column, info, "min"), dash, rangeInput(column, info, "max"));
    els.ranges.appendChild(group);
  }
}

export function syncRanges() {
  for (const input of els.ranges.querySelectorAll("input")) {
    const range = state.ranges[input.dataset.column];
    const value = range ? range[input.dataset.bound] : "";
    if (input.value !== value) input.value = value;
  }
}

export function readRanges() {
  // The values typed, also those whose `change` has not fired yet (Enter submits the form first).
  let changed = false;
  for (const input of els.ranges.querySelectorAll("input")) {
    const range = state.ranges[input.dataset.column] || { min: "", max: "" };
    if (range[input.dataset.bound] !== input.value) {
      range[input.dataset.bound] = input.value;
      state.ranges[input.dataset.column] = range;
      changed = true;
    }
  }
  for (const [column, range] of Object.entries(state.ranges)) if (!rangeActive(range)) delete state.ranges[column];
  return changed;
}

export function syncClear() {
  els.clearFilters.hidden = !filtersActive();
  const count = Object.values(state.facets).reduce((n, v) => n + v.length, 0) +
    Object.values(state.ranges).filter(rangeActive).length;
  els.filterCount.textContent = count ? ` (${count})` : "";
}

// The form as the state says (after a search, a link, the back button).
export function syncControls() {
  const q = state.query;
  els.q.value = q && q.kind === "text" ? q.value : "";
  els.url.value = q && q.kind === "url" ? q.value : "";
  if (state.version) els.version.value = state.version;
  els.dedup.checked = state.dedup;
  syncFacets();
  syncRanges();
  syncClear();
}

export function wireFilters() {
  els.dedup.addEventListener("change", () => {
    state.dedup = els.dedup.checked;
    refine();
  });
  els.clearFilters.addEventListener("click", () => {
    state.facets = {};
    state.ranges = {};
    syncFacets();
    syncRanges();
    refine();
  });
}
