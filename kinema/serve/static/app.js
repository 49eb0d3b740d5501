// The kinema page: the same /v1 API the SDK uses. Plain JS, no build step.
// Text from the server is only ever set with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem("kinema-key") || "", models: [], cards: new Map(), pollMs: 1000, lastId: null };

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const poll = response.headers.get("openai-poll-after-ms");
  if (poll) state.pollMs = Math.max(100, parseInt(poll, 10) || 1000);
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    const err = new Error(message);
    err.status = response.status;
    throw err;
  }
  return response;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function fill(select, values, chosen, labels = {}) {
  select.replaceChildren(...values.map((v) => new Option(labels[v] || v, v, false, v === chosen)));
}

function showModel() {
  const model = state.models.find((m) => m.id === $("model").value) || state.models[0];
  if (!model) return;
  // "auto": the server's choice, the default size, or for an image the offered size nearest its shape
  fill($("size"), ["", ...model.sizes], "", { "": `auto (${model.default_size}; an image: nearest its shape)` });
  fill($("seconds"), model.seconds, model.default_seconds);
  $("steps").placeholder = model.defaults.steps;
  $("guidance").placeholder = model.defaults.guidance;
  // A model that makes video from an image only (a Wan 2.1 image-to-video model: tasks ["image_to_video"]) needs one.
  const takesImage = model.tasks.includes("image_to_video");
  const needsImage = takesImage && !model.tasks.includes("text_to_video");
  $("image-label").hidden = !takesImage;
  $("image").required = needsImage;
  $("image-need").textContent = needsImage ? "required: this model makes video from an image" : "optional";
}

// Whether the model that made a video offers a task (remix, extend) on it; unknown models: let the server say.
function offers(video, task) {
  const model = state.models.find((m) => m.id === video.model);
  return !model || model.tasks.includes(task);
}

async function loadModels() {
  const body = await (await api("/v1/models")).json();
  state.models = body.data;
  fill($("model"), state.models.map((m) => m.id), state.models[0] && state.models[0].id);
  showModel();
}

// -- the gallery ---------------------------------------------------------------------------------------------

function describe(video) {
  const s = (video.kinema && video.kinema.settings) || {};
  const parts = [video.model, video.size, video.seconds + " s", "seed " + s.seed, s.steps + " steps",
                 "guidance " + s.guidance];
  if (video.kinema && video.kinema.kind !== "create") parts.unshift(video.kinema.kind);
  return parts.join(" · ");
}

function card(video) {
  let entry = state.cards.get(video.id);
  if (!entry) {
    const node = $("card-template").content.firstElementChild.cloneNode(true);
    node.dataset.id = video.id;
    node.querySelector(".remix").addEventListener("click", () => derive(video.id, "remix"));
    node.querySelector(".extend").addEventListener("click", () => derive(video.id, "extend"));
    node.querySelector(".delete").addEventListener("click", () => remove(video.id));
    entry = { node, shown: null };
    state.cards.set(video.id, entry);
  }
  return entry;
}

async function render(video, atTop = false) {
  const entry = card(video);
  const node = entry.node;
  if (!node.isConnected) {
    if (atTop) $("gallery").prepend(node); else $("gallery").append(node);
  }
  node.dataset.status = video.status;
  node.querySelector(".prompt").textContent = video.prompt;
  node.querySelector(".meta").textContent = describe(video);
  node.querySelector(".error").textContent = video.status === "failed" && video.error ? video.error.message : "";
  const ready = video.status === "completed";
  for (const task of ["remix", "extend"]) {
    const button = node.querySelector("." + task);
    button.disabled = !ready || !offers(video, task);
    if (!offers(video, task)) button.title = video.model + " does not " + task + " videos";
  }
  const media = node.querySelector(".media");
  if (ready && entry.shown !== "video") {
    entry.shown = "video";
    const blob = await (await api("/v1/videos/" + video.id + "/content")).blob();
    const el = document.createElement("video");
    Object.assign(el, { muted: true, loop: true, autoplay: true, controls: true, playsInline: true });
    el.src = URL.createObjectURL(blob);
    media.replaceChildren(el);
    el.play().catch(() => {});
  } else if (!ready && video.status !== "failed") {
    media.querySelector("progress").value = video.progress;
  } else if (video.status === "failed") {
    media.replaceChildren();
  }
  if (video.status === "queued" || video.status === "in_progress") schedule(video.id);
}

function schedule(id) {
  setTimeout(async () => {
    try {
      const video = await (await api("/v1/videos/" + id)).json();
      await render(video);
      if (video.status === "completed") setStatus("done: " + video.id);
      if (video.status === "failed") setStatus("failed: " + (video.error ? video.error.message : ""), true);
    } catch (e) {
      if (e.status !== 404) schedule(id);
    }
  }, state.pollMs);
}

async function loadGallery(more = false) {
  const query = "?limit=12" + (more && state.lastId ? "&after=" + encodeURIComponent(state.lastId) : "");
  const page = await (await api("/v1/videos" + query)).json();
  for (const video of page.data) await render(video);
  state.lastId = page.last_id;
  $("more").hidden = !page.has_more;
}

// -- actions -------------------------------------------------------------------------------------------------

function extras(form) {
  for (const name of ["negative_prompt", "steps", "guidance", "seed"]) {
    const value = $(name).value.trim();
    if (value !== "") form.append(name, value);
  }
}

async function create(event) {
  event.preventDefault();
  const form = new FormData();
  form.append("prompt", $("prompt").value);
  form.append("model", $("model").value);
  if ($("size").value) form.append("size", $("size").value);
  form.append("seconds", $("seconds").value);
  extras(form);
  const image = $("image").files[0];
  if (image && !$("image-label").hidden) form.append("input_reference", image);
  $("submit").disabled = true;
  try {
    const video = await (await api("/v1/videos", { method: "POST", body: form })).json();
    setStatus("queued: " + video.id);
    await render(video, true);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("submit").disabled = false;
  }
}

async function derive(id, kind) {
  const prompt = $("prompt").value.trim();
  if (!prompt) { setStatus("write a prompt above first", true); return; }
  try {
    let response;
    if (kind === "remix") {
      response = await api("/v1/videos/" + id + "/remix", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ prompt }) });
    } else {
      const form = new FormData();
      form.append("prompt", prompt);
      form.append("seconds", $("seconds").value);
      form.append("video[id]", id);
      response = await api("/v1/videos/extensions", { method: "POST", body: form });
    }
    const video = await response.json();
    setStatus(kind + " queued: " + video.id);
    await render(video, true);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function remove(id) {
  try {
    await api("/v1/videos/" + id, { method: "DELETE" });
    const entry = state.cards.get(id);
    if (entry) entry.node.remove();
    state.cards.delete(id);
    if (state.lastId === id) {  // "Load more" continues after the oldest card still shown (a purged id is no cursor)
      const cards = document.querySelectorAll("#gallery .card");
      state.lastId = cards.length ? cards[cards.length - 1].dataset.id : null;
    }
  } catch (e) {
    setStatus(e.message, true);
  }
}

// -- start ---------------------------------------------------------------------------------------------------

async function start() {
  const health = await (await fetch("/healthz")).json();
  const notes = [];
  if (!health.auth) notes.push("development mode: no API key needed");
  if (health.status === "no_workers") notes.push(health.message || "no worker is running: videos stay queued");
  $("server-note").textContent = notes.join(" · ");
  $("server-note").className = health.status === "no_workers" ? "error" : "";
  $("key-form").hidden = !health.auth;
  $("api-key").value = state.key;
  if (health.auth && !state.key) { setStatus("enter an API key to start", true); return; }
  try {
    await loadModels();
    await loadGallery();
    setStatus("");
  } catch (e) {
    setStatus(e.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("create-form").addEventListener("submit", create);
  $("model").addEventListener("change", showModel);
  $("more").addEventListener("click", () => loadGallery(true));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("api-key").value.trim();
    localStorage.setItem("kinema-key", state.key);
    start();
  });
  start();
});
