// A search: its request, the results grid and its paging.

import { call, clearError, originalUrl, showError, thumbnail } from "./api.js";
import { describeFilters, filterExpression, syncClear, syncControls, toggleFacet } from "./filters.js";
import { els, showView, state, stateToUrl } from "./state.js";

const PAGE = 50; // results per page

// -- searching ----------------------------------------------------------------------------------------

function searchBody(query, skip) {
  const body = { top: PAGE, skip: skip, modelVersion: state.version, dedup: state.dedup };
  const filter = filterExpression();
  if (filter) body.filter = filter;
  body[query.kind] = query.value;
  if (query.kind === "imageId" && query.frame != null) body.frameIndex = query.frame;
  return body;
}

export async function search(query, push) {
  state.view = "search";
  state.query = query;
  state.shown = 0;
  state.exhausted = false;
  const generation = ++state.generation;
  clearError();
  showView();
  els.more.hidden = true;
  els.results.replaceChildren();
  syncControls();
  if (push) history.pushState(null, "", stateToUrl(query));
  if (!query) {
    els.results.dataset.state = "idle";
    els.status.textContent = "";
    return;
  }
  if (query.kind === "upload-lost") {
    els.results.dataset.state = "idle";
    els.status.textContent = `The uploaded image “${query.label}” is not kept in the address; choose the file again.`;
    return;
  }
  performance.clearMarks();
  performance.mark("search-start");
  await loadPage(generation);
}

// The controls changed (a facet, a range, the dedup toggle): the same query again, as a new entry of
// the history; without a query, the address alone follows.
export function refine() {
  syncClear();
  if (state.query && state.query.kind !== "upload-lost") search(state.query, true);
  else history.replaceState(null, "", stateToUrl(null));
}

export async function loadPage(generation) {
  if (state.loading || state.exhausted || !state.query || state.view !== "search") return;
  state.loading = true;
  els.results.dataset.state = "loading";
  els.results.setAttribute("aria-busy", "true");
  els.status.textContent = state.shown ? "Loading more…" : "Searching…";
  try {
    const answer = await call(`./retrieval:search`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(searchBody(state.query, state.shown)),
    });
    if (generation !== state.generation) return; // a newer search started meanwhile
    const first = state.shown === 0;
    render(answer.results, state.shown);
    state.shown += answer.results.length;
    const maxTop = (state.models && state.models.limits.maxTop) || 1000;
    state.exhausted = answer.results.length < PAGE || state.shown + PAGE > maxTop;
    els.more.hidden = state.exhausted;
    els.results.dataset.state = "done";
    els.results.dataset.count = String(state.shown);
    if (first) {
      performance.mark("results-shown");
      const took = performance.measure("first-results", "search-start", "results-shown").duration;
      els.results.dataset.firstResultsMs = took.toFixed(1);
    }
    els.status.textContent = describe(state.shown);
  } catch (error) {
    if (generation === state.generation) {
      els.status.textContent = "";
      showError(error);
    }
  } finally {
    state.loading = false;
    els.results.removeAttribute("aria-busy");
  }
}

function describe(count) {
  const q = state.query;
  const what = {
    text: `“${q.label}”`, url: "the image at this URL", image: `the image “${q.label}”`,
    imageId: `images like ${q.label}`,
  }[q.kind];
  const filters = describeFilters();
  if (!count) return `No results for ${what}${filters ? ` with ${filters}` : ""}.`;
  return `${count} results for ${what}${filters ? `, ${filters}` : ""}, best first (model ${state.version}).`;
}

// -- results -----------------------------------------------------------------------------------------

function seconds(value) {
  const s = Math.round(value);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

// The copies folded into a kept result: "+N similar", opening a list of their ids (each opens its image).
function renderSimilar(card, hit, rank) {
  const similar = hit.similar || [];
  if (!similar.length) return;
  card.dataset.similar = similar.join(" ");
  const details = card.querySelector(".similar");
  details.hidden = false;
  const summary = details.querySelector("summary");
  summary.textContent = `+${similar.length} similar`;
  summary.title = similar.join(", ");
  summary.setAttribute("aria-label", `${similar.length} similar images folded into result ${rank}`);
  const list = details.querySelector("ul");
  for (const id of similar) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = originalUrl(id);
    a.target = "_blank";
    a.rel = "noopener";
    a.textContent = id;
    li.appendChild(a);
    list.appendChild(li);
  }
}

function render(results, offset) {
  const fragment = document.createDocumentFragment();
  results.forEach((hit, i) => {
    const rank = offset + i + 1;
    const card = els.template.content.firstElementChild.cloneNode(true);
    card.dataset.imageId = hit.imageId;
    for (const [name, value] of Object.entries(hit)) {
      if (Array.isArray(value) && name !== "similar") state.listColumns.add(name); // for containsAny
    }
    const video = hit.video || null;  // a video's moment: its segment, and its best frame
    const frame = video ? video.frameIndex : hit.frameIndex;
    if (video) {
      card.dataset.startS = String(video.startS);
      card.dataset.endS = String(video.endS);
      card.classList.add("video");
    }
    card.dataset.rank = String(rank);
    card.dataset.relevance = String(hit.relevance);
    card.dataset.cosine = String(hit.cosine);
    card.classList.add("result");
    const caption = hit.caption || hit.imageId;
    const img = card.querySelector("img");
    img.alt = caption;
    thumbnail(img, hit.imageId, frame);
    const moment = card.querySelector(".moment");
    if (video) {
      moment.hidden = false;
      moment.textContent = `▶ ${seconds(video.startS)}–${seconds(video.endS)} (best ${seconds(video.frameTimeS)})`;
      img.alt = `${caption}, at ${seconds(video.frameTimeS)}`;
    } else if (hit.frameTimeS != null) {
      moment.hidden = false;
      moment.textContent = `▶ ${seconds(hit.frameTimeS)}`;
    }
    const link = card.querySelector(".thumb");
    link.href = originalUrl(hit.imageId);
    link.setAttribute("aria-label", `Result ${rank}: ${caption} (opens the original)`);
    card.querySelector(".rank").textContent = `#${rank}`;
    card.querySelector(".caption").textContent = caption;
    card.querySelector(".relevance").textContent = hit.relevance.toFixed(3);
    card.querySelector(".cosine").textContent = hit.cosine.toFixed(3);
    const tags = card.querySelector(".tags");
    for (const tag of hit.tags || []) {
      const li = document.createElement("li");
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "chip small";
      chip.textContent = tag;
      chip.title = `Only images tagged “${tag}”`;
      chip.addEventListener("click", () => toggleFacet("tags", tag));
      li.appendChild(chip);
      tags.appendChild(li);
    }
    renderSimilar(card, hit, rank);
    const like = card.querySelector(".like");
    like.setAttribute("aria-label", `More like result ${rank}: ${caption}`);
    like.addEventListener("click", () => {
      els.q.value = "";
      const label = frame == null ? hit.imageId : `${hit.imageId} at ${seconds(video ? video.frameTimeS : hit.frameTimeS)}`;
      search({ kind: "imageId", value: hit.imageId, frame: frame, label: label }, true);
      window.scrollTo({ top: 0 });
    });
    const original = card.querySelector(".original");
    original.href = originalUrl(hit.imageId);
    fragment.appendChild(card);
  });
  els.results.appendChild(fragment);
}

export function wireResults() {
  els.more.addEventListener("click", () => loadPage(state.generation));
  if ("IntersectionObserver" in window) {
    // More results when the end of the grid comes into view (the button does the same by keyboard).
    new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && state.shown && !state.exhausted) loadPage(state.generation);
    }, { rootMargin: "400px" }).observe(els.sentinel);
  }
}
