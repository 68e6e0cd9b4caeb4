// The search page: plain JavaScript, no framework, no request to anywhere but this server.
//
// The query lives in the URL (?q=, ?url=, ?like=, with v= for the model version and f.<column>= for
// filters), so a search can be bookmarked, shared and reloaded, and the back button walks through searches.
"use strict";

(function () {
  const PAGE = 50; // results per page
  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("search-form"), q: $("q"), file: $("file"), drop: $("drop"), url: $("image-url"),
    urlButton: $("url-button"), versionBox: $("version-box"), version: $("version"),
    filters: $("filters"), keyBox: $("key-box"), key: $("api-key"), keyButton: $("key-button"),
    error: $("error"), status: $("status"), results: $("results"), more: $("more"),
    sentinel: $("sentinel"), maxWords: $("max-words"), template: $("card-template"),
  };

  const state = {
    models: null, // GET /retrieval/models
    version: null,
    filters: {}, // column -> value
    query: null, // {kind: "text"|"url"|"image"|"imageId", value, label}
    shown: 0,
    exhausted: false,
    loading: false,
    key: sessionStorage.getItem("embedding-api-key") || "",
    generation: 0, // a newer search makes older answers stale
  };

  // -- talking to the server --------------------------------------------------------------------------

  class ServerError extends Error {
    constructor(status, body) {
      const err = (body && body.error) || {};
      super(err.message || `HTTP ${status}`);
      this.status = status;
      this.code = err.code || String(status);
      this.inner = (err.innererror && err.innererror.code) || null;
    }
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (state.key) h["Ocp-Apim-Subscription-Key"] = state.key;
    return h;
  }

  async function call(path, options) {
    let response;
    try {
      response = await fetch(path, Object.assign({}, options, { headers: headers(options && options.headers) }));
    } catch (e) {
      throw new ServerError(0, { error: { code: "Unreachable", message: String(e) } });
    }
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) throw new ServerError(response.status, body);
    return body;
  }

  // -- messages a person understands -----------------------------------------------------------------

  function wordCount(text) { return text.trim() ? text.trim().split(/\s+/).length : 0; }

  function explain(error) {
    const limits = (state.models && state.models.limits) || { minTextWords: 1, maxTextWords: 70 };
    if (error.status === 0) {
      return "The server cannot be reached. Check that `embedding serve` is running, then try again.";
    }
    if (error.status === 401) return "This server needs an API key: enter it above.";
    if (error.status === 429) return "The server is busy. Try again in a moment.";
    switch (error.inner) {
      case "InvalidText": {
        const words = state.query && state.query.kind === "text" ? wordCount(state.query.value) : null;
        if (words !== null && words > limits.maxTextWords) {
          return `Your query has ${words} words; a query can have at most ${limits.maxTextWords} words. Shorten it and search again.`;
        }
        return `A query needs from ${limits.minTextWords} to ${limits.maxTextWords} words.`;
      }
      case "InvalidImageFormat":
        return "This file could not be read as an image. Try a JPEG, PNG, WebP, GIF, BMP or TIFF file.";
      case "InvalidImageSize":
        return `This image is too large: images must be under ${Math.round(limits.maxImageBytes / 1048576)} MB.`;
      case "InvalidImageDimension":
        return "This image is too small or too large: each side must be more than 10 and less than 16,000 pixels.";
      case "InvalidManifestRow":
        return "This URL cannot be used: give an http or https address of an image.";
      case "NotFound":
        return "No image was found at this URL.";
      case "FetchFailed":
      case "Timeout":
        return "The image at this URL could not be downloaded. Check the address and try again.";
      case "IndexNotFound":
        return `Model version ${state.version} has no search index yet. Build it with \`embedding index CONFIG\`, or pick another version.`;
      case "ImageNotFound":
        return "This image is no longer in the index.";
      default:
        return `The search failed: ${error.message}`;
    }
  }

  function showError(error) {
    els.error.textContent = explain(error);
    els.error.dataset.code = error.inner || error.code;
    els.error.hidden = false;
    els.results.dataset.state = "error";
    if (error.status === 401) {
      els.keyBox.hidden = false;
      els.key.focus();
    }
  }

  function clearError() {
    els.error.hidden = true;
    els.error.textContent = "";
    delete els.error.dataset.code;
  }

  // -- the URL holds the query -----------------------------------------------------------------------

  function queryToUrl(query) {
    const params = new URLSearchParams();
    if (query) {
      const name = { text: "q", url: "url", imageId: "like", image: "upload" }[query.kind];
      params.set(name, query.kind === "image" ? query.label : query.value);
      if (query.kind === "imageId" && query.frame != null) params.set("frame", String(query.frame));
    }
    if (state.version && state.models && state.version !== state.models.defaultVersion) params.set("v", state.version);
    for (const [column, value] of Object.entries(state.filters)) params.set(`f.${column}`, value);
    const text = params.toString();
    return text ? `?${text}` : location.pathname;
  }

  function urlToQuery() {
    const params = new URLSearchParams(location.search);
    state.filters = {};
    for (const [name, value] of params) if (name.startsWith("f.")) state.filters[name.slice(2)] = value;
    const version = params.get("v");
    if (version && state.models && state.models.models.some((m) => m.modelVersion === version)) state.version = version;
    else if (state.models) state.version = state.models.defaultVersion;
    if (params.has("q")) return { kind: "text", value: params.get("q"), label: params.get("q") };
    if (params.has("url")) return { kind: "url", value: params.get("url"), label: params.get("url") };
    if (params.has("like")) {
      const frame = params.has("frame") ? Number(params.get("frame")) : null;
      const label = frame == null ? params.get("like") : `${params.get("like")} (a frame)`;
      return { kind: "imageId", value: params.get("like"), frame: frame, label: label };
    }
    if (params.has("upload")) return { kind: "upload-lost", label: params.get("upload") };
    return null;
  }

  // -- searching ----------------------------------------------------------------------------------------

  function searchBody(query, skip) {
    const body = { top: PAGE, skip: skip, modelVersion: state.version };
    if (Object.keys(state.filters).length) body.filters = state.filters;
    body[query.kind] = query.value;
    if (query.kind === "imageId" && query.frame != null) body.frameIndex = query.frame;
    return body;
  }

  async function search(query, push) {
    state.query = query;
    state.shown = 0;
    state.exhausted = false;
    const generation = ++state.generation;
    clearError();
    els.more.hidden = true;
    els.results.replaceChildren();
    syncControls();
    if (push) history.pushState(null, "", queryToUrl(query));
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

  async function loadPage(generation) {
    if (state.loading || state.exhausted || !state.query) return;
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
    const filters = Object.entries(state.filters).map(([c, v]) => `${c}: ${v}`).join(", ");
    if (!count) return `No results for ${what}${filters ? ` with ${filters}` : ""}.`;
    return `${count} results for ${what}${filters ? `, ${filters}` : ""}, best first (model ${state.version}).`;
  }

  // -- results -----------------------------------------------------------------------------------------

  function thumbUrl(id, frame) {
    const at = frame == null ? "" : `&frameIndex=${encodeURIComponent(frame)}`;
    return `./retrieval/thumbnails/${encodeURIComponent(id)}?modelVersion=${encodeURIComponent(state.version)}${at}`;
  }

  function seconds(value) {
    const s = Math.round(value);
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function originalUrl(id) {
    return `./retrieval/images/${encodeURIComponent(id)}?modelVersion=${encodeURIComponent(state.version)}`;
  }

  async function setImage(img, url) {
    if (!state.key) { img.src = url; return; }
    // With a key, images come through fetch (an <img> cannot send the key header).
    try {
      const response = await fetch(url, { headers: headers() });
      if (response.ok) img.src = URL.createObjectURL(await response.blob());
      else img.src = "page/placeholder.svg";
    } catch (e) {
      img.src = "page/placeholder.svg";
    }
  }

  function render(results, offset) {
    const fragment = document.createDocumentFragment();
    results.forEach((hit, i) => {
      const rank = offset + i + 1;
      const card = els.template.content.firstElementChild.cloneNode(true);
      card.dataset.imageId = hit.imageId;
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
      img.addEventListener("error", () => { img.src = "page/placeholder.svg"; }, { once: true });
      setImage(img, thumbUrl(hit.imageId, frame));
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
        chip.addEventListener("click", () => toggleFilter("tags", tag));
        li.appendChild(chip);
        tags.appendChild(li);
      }
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

  // -- filters and versions ----------------------------------------------------------------------------

  function currentModel() {
    return state.models && state.models.models.find((m) => m.modelVersion === state.version);
  }

  function renderFilters() {
    els.filters.replaceChildren();
    const model = currentModel();
    const facets = (model && model.filters) || {};
    for (const [column, values] of Object.entries(facets)) {
      const group = document.createElement("div");
      group.className = "filter-group";
      group.setAttribute("role", "group");
      group.setAttribute("aria-label", `Filter by ${column}`);
      const label = document.createElement("span");
      label.className = "filter-label";
      label.textContent = column;
      group.appendChild(label);
      for (const { value, count } of values) {
        const chip = document.createElement("button");
        chip.type = "button";
        chip.className = "chip";
        chip.dataset.column = column;
        chip.dataset.value = value;
        chip.textContent = value;
        chip.title = `${count} images`;
        chip.setAttribute("aria-pressed", String(state.filters[column] === value));
        chip.addEventListener("click", () => toggleFilter(column, value));
        group.appendChild(chip);
      }
      els.filters.appendChild(group);
    }
  }

  function toggleFilter(column, value) {
    if (state.filters[column] === value) delete state.filters[column];
    else state.filters[column] = value;
    renderFilters();
    if (state.query) search(state.query, true);
    else history.replaceState(null, "", queryToUrl(null));
  }

  function syncControls() {
    const q = state.query;
    els.q.value = q && q.kind === "text" ? q.value : "";
    els.url.value = q && q.kind === "url" ? q.value : "";
    if (state.version) els.version.value = state.version;
    renderFilters();
  }

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

  function wire() {
    els.form.addEventListener("submit", (event) => {
      event.preventDefault();
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
      state.filters = {};
      renderFilters();
      if (state.query) search(state.query, true);
    });
    els.more.addEventListener("click", () => loadPage(state.generation));
    els.keyButton.addEventListener("click", () => {
      state.key = els.key.value.trim();
      sessionStorage.setItem("embedding-api-key", state.key);
      els.keyBox.hidden = true;
      start();
    });
    window.addEventListener("popstate", () => search(urlToQuery(), false));
    if ("IntersectionObserver" in window) {
      // More results when the end of the grid comes into view (the button does the same by keyboard).
      new IntersectionObserver((entries) => {
        if (entries.some((e) => e.isIntersecting) && state.shown && !state.exhausted) loadPage(state.generation);
      }, { rootMargin: "400px" }).observe(els.sentinel);
    }
  }

  async function start() {
    try {
      state.models = await call("./retrieval/models");
    } catch (error) {
      showError(error);
      return;
    }
    renderVersions();
    const query = urlToQuery();
    document.body.dataset.ready = "true"; // the models are known: the page takes searches
    await search(query, false);
    if (!query) els.q.focus();
  }

  wire();
  start();
})();
