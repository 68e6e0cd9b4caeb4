// The Duplicates view: the groups of exact and near copies `embedding duplicates` found.

import { call, clearError, originalUrl, showError, thumbnail } from "./api.js";
import { syncControls } from "./filters.js";
import { els, showView, state, stateToUrl } from "./state.js";

const GROUPS_PAGE = 30; // duplicate groups shown at a time: a big collection has thousands

export async function showDuplicates(push) {
  state.view = "duplicates";
  state.query = null;
  const generation = ++state.generation;
  clearError();
  showView();
  syncControls();
  if (push) history.pushState(null, "", stateToUrl(null));
  els.duplicates.replaceChildren();
  els.moreGroups.hidden = true;
  els.duplicates.dataset.state = "loading";
  els.status.textContent = "Looking up duplicate groups…";
  try {
    const answer = await call(`./retrieval/duplicates?modelVersion=${encodeURIComponent(state.version)}`);
    if (generation !== state.generation) return;
    state.groups = answer.groups;
    state.groupsShown = 0;
    renderGroups();
    const exact = answer.groups.filter((g) => g.kind === "exact").length;
    const images = answer.groups.reduce((sum, g) => sum + g.members.length, 0);
    els.status.textContent = answer.groups.length
      ? `${answer.groups.length} groups of copies (${exact} exact, ${answer.groups.length - exact} near), ${images} images (model ${answer.modelVersion}).`
      : `No duplicates among the images of model ${answer.modelVersion}.`;
    els.duplicates.dataset.state = "done";
    els.duplicates.dataset.count = String(answer.groups.length);
  } catch (error) {
    if (generation === state.generation) {
      els.status.textContent = "";
      showError(error);
    }
  }
}

function renderGroups() {
  const fragment = document.createDocumentFragment();
  const end = Math.min(state.groups.length, state.groupsShown + GROUPS_PAGE);
  for (const group of state.groups.slice(state.groupsShown, end)) {
    const box = els.groupTemplate.content.firstElementChild.cloneNode(true);
    box.dataset.groupId = String(group.groupId);
    box.dataset.kind = group.kind;
    box.querySelector(".group-name").textContent = `Group ${group.groupId}`;
    const kind = box.querySelector(".kind");
    kind.textContent = group.kind === "exact" ? "exact copies" : "near copies";
    kind.classList.add(group.kind);
    box.querySelector(".group-size").textContent = `${group.members.length} images`;
    const list = box.querySelector(".members");
    group.members.forEach((member, i) => list.appendChild(memberItem(member, i)));
    fragment.appendChild(box);
  }
  els.duplicates.appendChild(fragment);
  state.groupsShown = end;
  els.moreGroups.hidden = state.groupsShown >= state.groups.length;
}

function memberItem(member, i) {
  const li = document.createElement("li");
  li.className = "member";
  li.dataset.imageId = member.imageId;
  const link = document.createElement("a");
  link.className = "member-thumb";
  link.href = originalUrl(member.imageId);
  link.target = "_blank";
  link.rel = "noopener";
  link.setAttribute("aria-label", `${member.imageId} (opens the original)`);
  const img = document.createElement("img");
  img.alt = member.imageId;
  img.loading = "lazy";
  img.decoding = "async";
  img.width = 128;
  img.height = 128;
  thumbnail(img, member.imageId, null);
  link.appendChild(img);
  li.appendChild(link);
  const id = document.createElement("a");
  id.className = "member-id";
  id.href = `?like=${encodeURIComponent(member.imageId)}`; // a search for images like it
  id.dataset.nav = "";
  id.textContent = member.imageId;
  id.title = member.uri ? `${member.uri}: more like this` : "More like this";
  li.appendChild(id);
  const cosine = document.createElement("span");
  cosine.className = "member-cosine";
  // Each member's cosine is to the group's first member (the smallest id); the first is the reference.
  cosine.textContent = i === 0 ? "reference" : `cosine ${Number(member.cosine).toFixed(3)}`;
  if (i === 0) cosine.title = "The cosines in this group are to this image";
  li.appendChild(cosine);
  return li;
}

export function wireDuplicates() {
  els.moreGroups.addEventListener("click", renderGroups);
}
