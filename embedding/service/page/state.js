// The page's state, the elements that show it, and the URL that holds it.
//
// The whole state lives in the URL, so a search (filtered or not) can be bookmarked, shared and reloaded,
// and the back button walks through searches:
//   ?q=, ?url=, ?like= (+ frame=)  the query              v=        the model version (when not the default)
//   f.<column>=<value>             a facet value (repeated: any of them)
//   min.<column>=, max.<column>=   a range's bounds, as the inputs hold them (inclusive)
//   dedup=0                        near-duplicates shown beside each other (folding is on by default)
//   view=duplicates                the Duplicates view instead of a search

const $ = (id) => document.getElementById(id);
export const els = {
  form: $("search-form"), q: $("q"), file: $("file"), drop: $("drop"), url: $("image-url"),
  urlButton: $("url-button"), versionBox: $("version-box"), version: $("version"),
  refine: $("refine"), dedup: $("dedup"), filters: $("filters"), ranges: $("ranges"),
  clearFilters: $("clear-filters"), filterBox: $("filter-box"), filterCount: $("filter-count"), keyBox: $("key-box"), key: $("api-key"), keyButton: $("key-button"),
  error: $("error"), status: $("status"), results: $("results"), more: $("more"),
  sentinel: $("sentinel"), maxWords: $("max-words"), template: $("card-template"),
  duplicates: $("duplicates"), moreGroups: $("more-groups"), groupTemplate: $("group-template"),
};

export const state = {
  models: null, // GET /retrieval/models
  version: null,
  view: "search", // or "duplicates"
  facets: {}, // column -> [values]: a result has any of them
  ranges: {}, // column -> {min, max}: the range inputs' values ("" when open)
  dedup: true,
  listColumns: new Set(), // columns seen holding lists in results (tags)
  query: null, // {kind: "text"|"url"|"image"|"imageId", value, label}
  shown: 0,
  exhausted: false,
  loading: false,
  groups: [], // the Duplicates view's groups, and how many are shown
  groupsShown: 0,
  key: sessionStorage.getItem("embedding-api-key") || "",
  generation: 0, // a newer search makes older answers stale
};

// -- the URL holds the state -----------------------------------------------------------------------

export function stateToUrl(query) {
  const params = new URLSearchParams();
  if (state.view === "duplicates") {
    params.set("view", "duplicates");
  } else if (query) {
    const name = { text: "q", url: "url", imageId: "like", image: "upload" }[query.kind];
    params.set(name, query.kind === "image" ? query.label : query.value);
    if (query.kind === "imageId" && query.frame != null) params.set("frame", String(query.frame));
  }
  if (state.version && state.models && state.version !== state.models.defaultVersion) params.set("v", state.version);
  if (state.view === "search") {
    for (const [column, values] of Object.entries(state.facets)) {
      for (const value of values) params.append(`f.${column}`, value);
    }
    for (const [column, range] of Object.entries(state.ranges)) {
      if (range.min !== "") params.set(`min.${column}`, range.min);
      if (range.max !== "") params.set(`max.${column}`, range.max);
    }
    if (!state.dedup) params.set("dedup", "0");
  }
  const text = params.toString();
  return text ? `?${text}` : location.pathname;
}

export function urlToState() {
  const params = new URLSearchParams(location.search);
  state.facets = {};
  state.ranges = {};
  for (const [name, value] of params) {
    const dot = name.indexOf(".");
    const kind = name.slice(0, dot), column = name.slice(dot + 1);
    if (dot < 1 || !column) continue;
    if (kind === "f") {
      const values = state.facets[column] || (state.facets[column] = []);
      if (!values.includes(value)) values.push(value);
    } else if (kind === "min" || kind === "max") {
      const range = state.ranges[column] || (state.ranges[column] = { min: "", max: "" });
      range[kind] = value;
    }
  }
  state.dedup = params.get("dedup") !== "0";
  state.view = params.get("view") === "duplicates" ? "duplicates" : "search";
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

// -- the view shown: a search's results, or the Duplicates view ---------------------------------------

export function showView() {
  const dupes = state.view === "duplicates";
  els.duplicates.hidden = !dupes;
  els.results.hidden = dupes;
  els.refine.hidden = dupes;
  if (dupes) els.more.hidden = true; else els.moreGroups.hidden = true;
  for (const link of document.querySelectorAll(".views a")) {
    if (link.dataset.view === state.view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = dupes ? "Duplicates in the collection" : "Search the collection";
}
