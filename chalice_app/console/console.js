// The pipeline's console: the public HTTP API only, relative to this page (so it keeps API
// Gateway's stage prefix), polled every few seconds. DOM built with textContent, never HTML strings.
import { authorization, signIn, signInAgain, signOut } from "./sign_in.js";

const POLL_MS = 3000;
const STEPS = ["STARTING", "TUNING", "TRAINING", "DEPLOYING", "DEPLOYED"];
const ENDED = new Set(["REJECTED", "FAILED", "REFUSED"]);
const HAS_REPORT = new Set(["DEPLOYING", "DEPLOYED", "REJECTED", "FAILED"]);
const KEYS = "0123456789abcdefghijklmnopqrstuvwxyz";
const state = { classes: new Set(), review: [], predictionsNext: null, extraPredictions: [] };

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined).map(
    (c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  return node;
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(await authorization()) };
  const response = await fetch(path, { headers, ...options });
  if (response.status === 401 && headers.Authorization) return signInAgain();
  const body = await response.json().catch(() => null);
  return { status: response.status, body };
}

// A link to an API page (a run's report): where the API needs a token, a plain navigation would
// carry none, so the page is fetched with it and opened from memory.
async function openPage(event) {
  const headers = await authorization();
  if (!headers.Authorization) return; // the link's own navigation does
  event.preventDefault();
  const response = await fetch(event.currentTarget.getAttribute("href"), { headers });
  if (response.status === 401) return signInAgain();
  const page = new Blob([await response.text()], { type: "text/html" });
  window.open(URL.createObjectURL(page), "_blank", "noopener");
}

const percent = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "");
const badge = (status) => el("span", { class: `badge ${status}` }, status);

function liveAccuracy(model) {
  const live = model && model.live_accuracy;
  if (!live || live.accuracy === null || live.accuracy === undefined) return `no sampled label yet`;
  const [low, high] = live.interval;
  return `${percent(live.accuracy)} of ${live.sampled} (${percent(low)}–${percent(high)})`;
}

function renderLive(model) {
  const card = $("#live");
  card.replaceChildren(el("h2", {}, "Live model"));
  if (!model) { card.append(el("p", {}, "No model is live yet.")); return; }
  card.append(el("p", { id: "live-version" }, el("strong", {}, model.model_version), " ", badge("LIVE")),
    el("p", {}, "test accuracy ", el("strong", { id: "live-test-accuracy" }, percent(model.test_accuracy)),
      " · live accuracy ", el("strong", { id: "live-accuracy" }, liveAccuracy(model))));
}

// GET /drift: the live version's latest window against its test split, and the last episodes.
function renderDrift(drift, liveVersion) {
  const card = $("#drift");
  card.replaceChildren(el("h2", {}, "Image drift"));
  const mine = drift.versions.find((v) => v.model_version === liveVersion);
  const t = drift.thresholds;
  let line;
  if (!mine) line = "no model is live yet";
  else if (mine.has_reference === false) line = `not checked: ${mine.no_reference_reason}`;
  else if (!mine.statistics) line = `not compared yet: a window needs ${drift.min_images} predictions`;
  else {
    const s = mine.statistics;
    line = `${s.images} newest images · confidence PSI ${s.confidence_psi.toFixed(3)} (over ${t.psi} drifts) · ` +
      `class-mix p ${s.class_p_value.toExponential(1)} (under ${t.class_p_value}) · ` +
      `embedding distance ${s.embedding_distance.toFixed(3)} (over ${t.embedding_distance})`;
  }
  card.append(el("p", { id: "drift-state", "data-drifting": mine && mine.drifting ? "true" : "false" },
    mine ? badge(mine.drifting ? "DRIFTING" : "STEADY") : null, " ", line));
  card.append(el("ul", { id: "drift-events" }, drift.items.slice(0, 5).map((e) => el("li", {},
    `${when(e.started_at)} ${e.model_version}: ${e.reasons.join("; ")}`, e.ended_at ? ` (ended ${when(e.ended_at)})` : ""))));
}

function renderRuns(runs) {
  $("#runs").replaceChildren(...runs.map((run) => {
    const at = STEPS.indexOf(run.status);
    const steps = STEPS.map((step, i) => el("span", {
      class: `step ${at > i || run.status === "DEPLOYED" ? "done" : at === i ? "current" : ""}` }, step));
    if (ENDED.has(run.status)) steps.push(el("span", { class: "step ended" }, run.status));
    const details = [run.tuning_job && `tuning ${run.tuning_job}`, run.training_job && `final job ${run.training_job}`,
      run.test_accuracy !== undefined && `test accuracy ${percent(run.test_accuracy)}`,
      run.model_version && `model ${run.model_version}`].filter(Boolean).join(" · ");
    return el("li", { class: "run", "data-run-id": run.run_id, "data-status": run.status },
      el("div", {}, el("strong", {}, run.run_id), " ", badge(run.status), " ", when(run.created_at),
        HAS_REPORT.has(run.status) && run.training_job
          ? el("a", { href: `runs/${run.run_id}/report`, target: "_blank", class: "report", onclick: openPage },
            " report") : null),
      el("div", { class: "steps" }, steps),
      details ? el("div", { class: "reason" }, details) : null,
      run.gate ? el("div", { class: "reason" }, `gate: ${run.gate}`) : null,
      run.reason ? el("div", { class: "reason" }, `reason: ${run.reason}`) : null);
  }));
}

function renderRegistry(models) {
  $("#registry tbody").replaceChildren(...models.map((m) => el("tr", { "data-version": m.model_version },
    el("td", {}, m.model_version), el("td", {}, badge(m.status)), el("td", {}, percent(m.test_accuracy)),
    el("td", {}, liveAccuracy(m)), el("td", {}, m.run_id || ""))));
}

function rememberClasses(items) {
  for (const item of items) for (const l of item.labels || []) state.classes.add(l.label);
}

function predictionRow(p) {
  const name = p.image_key.replace(/^incoming\//, "");
  const labels = (p.labels || []).map((l) => `${l.label} ${percent(l.probability)}`).join(", ");
  return el("tr", { "data-key": p.image_key, "data-status": p.status },
    el("td", {}, el("img", { class: "thumb", src: p.url, alt: name, loading: "lazy" })),
    el("td", {}, name), el("td", {}, badge(p.status), p.error ? el("div", { class: "reason" }, p.error) : null),
    el("td", { class: "labels" }, labels), el("td", {}, p.model_version || ""), el("td", {}, when(p.created_at)));
}

function renderPredictions(page) {
  rememberClasses(page.items);
  const rows = [...page.items, ...state.extraPredictions].map(predictionRow);
  $("#prediction-table tbody").replaceChildren(...rows);
  if (!state.extraPredictions.length) state.predictionsNext = page.next;
  $("#more-predictions").hidden = !state.predictionsNext;
}

async function morePredictions() {
  const { body } = await api(`predictions?limit=50&cursor=${encodeURIComponent(state.predictionsNext)}`);
  state.extraPredictions.push(...body.items);
  state.predictionsNext = body.next;
  refresh();
}

function renderReview(page) {
  state.review = page.items;
  rememberClasses(page.items);
  const classes = [...state.classes].sort();
  $("#review-count").textContent = page.items.length ? `(${page.items.length}${page.next ? "+" : ""})` : "";
  $("#review-items").replaceChildren(...(page.items.length ? page.items.map((item) => {
    const top = (item.labels || [])[0];
    return el("div", { class: "review-item", "data-name": item.name },
      el("img", { src: item.url, alt: item.name }),
      el("div", {}, el("div", {}, el("strong", {}, item.name), " ", el("span", { class: "badge" }, item.review_reason)),
        el("div", { class: "reason" }, top ? `predicted ${top.label} (${percent(top.probability)})` : "no labels"),
        el("div", {}, classes.map((c, i) => el("button", { type: "button", "data-label": c,
          onclick: () => label(item.name, c) }, c, i < KEYS.length ? el("kbd", {}, ` ${KEYS[i]}`) : null)),
          el("input", { class: "new-label", size: 10, placeholder: "other label",
            onkeydown: (e) => { if (e.key === "Enter") label(item.name, e.target.value.trim()); } }))));
  }) : [el("p", {}, "Nothing waits for review.")]));
}

async function label(name, value) {
  if (!value) return;
  const { status, body } = await api(`review/${encodeURIComponent(name)}`, {
    method: "POST", body: JSON.stringify({ label: value }) });
  say(status === 200 ? `${name} labelled ${value}: ${body.training_key}` : `${name}: ${body && body.Message}`);
  refresh();
}

function onKey(event) {
  if (location.hash !== "#review" || event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey) return;
  const index = KEYS.indexOf(event.key.toLowerCase());
  const classes = [...state.classes].sort();
  if (index >= 0 && index < classes.length && state.review.length) label(state.review[0].name, classes[index]);
}

function say(text) { $("#status").textContent = text; }

// --- uploads: a presigned PUT per file (POST /uploads), straight to S3, progress from XHR ---
function putFile(url, file, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress.value = e.loaded / e.total; };
    xhr.onload = () => (xhr.status < 300 ? resolve() : reject(new Error(`S3 answered ${xhr.status}`)));
    xhr.onerror = () => reject(new Error("the upload failed (network or CORS)"));
    xhr.send(file);
  });
}

async function uploadOne(file) {
  const target = new FormData($("#upload-form")).get("target");
  const progress = el("progress", { max: 1, value: 0 });
  const outcome = el("span", { class: "outcome" }, "asking for a URL…");
  $("#uploads").append(el("li", { "data-file": file.name }, el("span", {}, file.name), progress, outcome));
  const request = { target, filename: file.name };
  if (target === "training") request.label = $("#upload-label").value.trim();
  const { status, body } = await api("uploads", { method: "POST", body: JSON.stringify(request) });
  if (status !== 200) { outcome.textContent = `refused: ${body && body.Message}`; return; }
  outcome.textContent = "uploading…";
  try {
    await putFile(body.url, file, progress);
    progress.value = 1;
    outcome.textContent = `uploaded as ${body.key}`;
    outcome.dataset.key = body.key;
  } catch (error) { outcome.textContent = error.message; }
}

const uploadAll = (files) => Promise.all([...files].map(uploadOne));

function wireUploads() {
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); uploadAll(e.dataTransfer.files); });
  $("#files").addEventListener("change", (e) => { uploadAll(e.target.files); e.target.value = ""; });
}

// --- views and polling ---
function show() {
  const view = (location.hash || "#overview").slice(1);
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== view;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.hash === `#${view}`);
  refresh();
}

let refreshing = null;
async function refresh() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      const [models, runs, predictions, review, drift] = await Promise.all(
        [api("models"), api("runs?limit=10"), api("predictions?limit=50"), api("review?limit=20"),
          api("drift?limit=5")]);
      if (models.status === 200) { renderLive(models.body.live); renderRegistry(models.body.items); }
      if (drift.status === 200 && models.status === 200) {
        renderDrift(drift.body, models.body.live && models.body.live.model_version);
      }
      if (runs.status === 200) renderRuns(runs.body.items);
      if (predictions.status === 200) renderPredictions(predictions.body);
      if (review.status === 200) renderReview(review.body);
      document.body.dataset.loaded = "true";
    } catch (error) { say(`the API did not answer: ${error.message}`); } finally { refreshing = null; }
  })();
  return refreshing;
}

// --- start: signed in (where the stage asks for it), then the views ---
function signedIn(who) {
  if (who.mode === "iam") {
    say("this stage's API takes SigV4-signed requests, which a browser cannot make: deploy it with AUTH=cognito");
    return false;
  }
  if (who.email) {
    $("#user").replaceChildren(who.email, " ", el("button", { type: "button", id: "sign-out", onclick: signOut }, "Sign out"));
  }
  return true;
}

let who;
try { who = await signIn(); } catch (error) {
  say(error.message);
  $("#user").replaceChildren(el("button", { type: "button", id: "sign-in", onclick: signInAgain }, "Sign in"));
}
if (who && signedIn(who)) start();

function start() {
  $("#start-run").addEventListener("click", async () => {
    const { status, body } = await api("runs", { method: "POST" });
    $("#start-run-answer").textContent = status === 202 ? `started ${body.run_id}` : (body && body.Message) || status;
    refresh();
  });
  $("#more-predictions").addEventListener("click", morePredictions);
  document.addEventListener("keydown", onKey);
  window.addEventListener("hashchange", show);
  wireUploads();
  show();
  setInterval(refresh, POLL_MS);
}
