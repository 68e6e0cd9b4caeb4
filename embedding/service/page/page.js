// The search page: plain JavaScript, no framework, no request to anywhere but this server. ES modules of
// one concept each, loaded by index.html's <script type="module"> as they are (no build step):
//   page.js        this entry point: the inputs, the addresses' navigation, the start
//   state.js       the state, the elements that show it, and the URL that holds it
//   api.js         the calls to the server, its images, and its errors in words
//   filters.js     facets, range pickers, the dedup toggle, and the filter they make
//   results.js     a search, the results grid and its paging
//   duplicates.js  the Duplicates view

import { call, showError } from "./api.js";
import { showDuplicates, wireDuplicates } from "./duplicates.js";
import { filtersActive, readRanges, renderFilters, renderRanges, wireFilters } from "./filters.js";
import { refine, search, wireResults } from "./results.js";
import { els, state, stateToUrl, urlToState } from "./state.js";

const PHONE = window.matchMedia("(max-width: 640px)"); // as page.css's phone layout

// -- model versions ------------------------------------------------------------------------------------

function renderVersions() {
  els.version.replaceChildren();
  for (const model of state.models.models) {
    const option = document.createElement("option");
    option.value = model.modelVersion;
    const rows = model.index ? `${model.index.rows} images` : "no index";
    option.textContent = `${model.modelVersion} (${rows})`;
    els.version.appendChild(option);
  }
  els.versionBox.hidden = state.models.models.length < 2;
  els.maxWords.textContent = String(state.models.limits.maxTextWords);
}

// -- inputs ------------------------------------------------------------------------------------------

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function searchFile(file) {
  if (!file) return;
  const data = await readFile(file);
  els.q.value = "";
  search({ kind: "image", value: data, label: file.name }, true);
}

// What the address says: a search, or the Duplicates view.
function route() {
  const query = urlToState();
  renderFilters();
  renderRanges();
  if (state.view === "duplicates") return showDuplicates(false);
  return search(query, false);
}

// -- wiring, and the start ------------------------------------------------------------------------------

function wire() {
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    // Enter in a range input (or on a checkbox) submits the form: it applies that control, whether or
    // not its `change` came first, and searches no more than once.
    if (els.refine.contains(document.activeElement)) {
      if (readRanges()) refine();
      return;
    }
    const text = els.q.value.trim();
    if (text) search({ kind: "text", value: text, label: text }, true);
  });
  els.urlButton.addEventListener("click", () => {
    const url = els.url.value.trim();
    if (url) search({ kind: "url", value: url, label: url }, true);
  });
  els.url.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); els.urlButton.click(); }
  });
  els.file.addEventListener("change", () => searchFile(els.file.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    els.drop.addEventListener(name, (event) => { event.preventDefault(); els.drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    els.drop.addEventListener(name, () => els.drop.classList.remove("over"));
  }
  els.drop.addEventListener("drop", (event) => {
    event.preventDefault();
    searchFile(event.dataTransfer.files[0]);
  });
  els.version.addEventListener("change", () => {
    state.version = els.version.value;
    state.facets = {}; // another version's index may carry other columns
    state.ranges = {};
    renderFilters();
    renderRanges();
    if (state.view === "duplicates") showDuplicates(true);
    else if (state.query) search(state.query, true);
    else history.replaceState(null, "", stateToUrl(null));
  });
  wireFilters();
  wireResults();
  wireDuplicates();
  // The views' links and a group member's "more like this" change the address without reloading.
  document.addEventListener("click", (event) => {
    const link = event.target.closest(".views a, a[data-nav]");
    if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    if (link.dataset.view === "duplicates") { showDuplicates(true); return; }
    if (link.dataset.view === "search") { search(null, true); els.q.focus(); return; }
    history.pushState(null, "", link.getAttribute("href"));
    route();
    window.scrollTo({ top: 0 });
  });
  els.keyButton.addEventListener("click", () => {
    state.key = els.key.value.trim();
    sessionStorage.setItem("embedding-api-key", state.key);
    els.keyBox.hidden = true;
    start();
  });
  window.addEventListener("popstate", route);
  // A wide window shows no summary to open the filters with: widened, they open.
  PHONE.addEventListener("change", () => { if (!PHONE.matches) els.filterBox.open = true; });
}

async function start() {
  try {
    state.models = await call("./retrieval/models");
  } catch (error) {
    showError(error);
    return;
  }
  renderVersions();
  const pending = route();
  if (PHONE.matches && !filtersActive()) els.filterBox.open = false;
  document.body.dataset.ready = "true"; // the models are known: the page takes searches
  await pending;
  if (!state.query && state.view === "search") els.q.focus();
}

wire();
start();
