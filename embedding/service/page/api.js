// Talking to the server: its calls (with the API key, once one is given), its images, and its errors in
// words a person understands.

import { els, state } from "./state.js";

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

export async function call(path, options) {
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
    case "DuplicatesNotFound":
      return `Duplicates of model version ${state.version} have not been looked for yet: run \`embedding duplicates CONFIG\` on the server, then reload this page.`;
    case "InvalidArgument":
      // A filter the index refuses (a bound that is not a number or a date, say): the server says which.
      return `The search was refused: ${error.message}`;
    default:
      return `The search failed: ${error.message}`;
  }
}

export function showError(error) {
  els.error.textContent = explain(error);
  els.error.dataset.code = error.inner || error.code;
  els.error.hidden = false;
  const target = state.view === "duplicates" ? els.duplicates : els.results;
  target.dataset.state = "error";
  if (error.status === 401) {
    els.keyBox.hidden = false;
    els.key.focus();
  }
}

export function clearError() {
  els.error.hidden = true;
  els.error.textContent = "";
  delete els.error.dataset.code;
}

// -- the server's images -------------------------------------------------------------------------------

function thumbUrl(id, frame) {
  const at = frame == null ? "" : `&frameIndex=${encodeURIComponent(frame)}`;
  return `./retrieval/thumbnails/${encodeURIComponent(id)}?modelVersion=${encodeURIComponent(state.version)}${at}`;
}

export function originalUrl(id) {
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

export function thumbnail(img, id, frame) {
  img.addEventListener("error", () => { img.src = "page/placeholder.svg"; }, { once: true });
  setImage(img, thumbUrl(id, frame));
}
