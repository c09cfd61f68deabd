// The review page: one clip at a time from /api/state, decisions posted to /api/decide as they are made.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let state = null;   // {items, problems, rerun, choices, decisions}
let shown = [];     // the items that pass the filters
let current = 0;    // index into shown

function api(path, options = {}) {
  const headers = { "X-Review-Token": TOKEN, ...(options.headers || {}) };
  return fetch(path, { ...options, headers });
}

function keyOf(choice) {
  // 1-6 for the six labels, k keeps the original label, u marks the clip unusable.
  const i = state.choices.indexOf(choice);
  return choice === "unusable" ? "u" : String(i + 1);
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function applyFilters() {
  const original = $("filter-original").value;
  const vote = $("filter-vote").value;
  const id = shown[current] && shown[current].video_id;
  shown = state.items.filter((it) =>
    (!original || it.original === original) && (!vote || it.votes.some((v) => v.label === vote)));
  current = Math.max(0, shown.findIndex((it) => it.video_id === id));
  render();
}

function summary() {
  const decided = state.items.filter((it) => state.decisions[it.video_id]);
  $("count").textContent = `decided ${decided.length} of ${state.items.length}`;
  const audited = state.items.filter((it) => it.audit);
  if (audited.length) {
    const done = audited.filter((it) => state.decisions[it.video_id]);
    const confirmed = done.filter((it) => state.decisions[it.video_id].label === it.refined);
    $("audit-count").textContent =
      `· audit: ${confirmed.length} of ${done.length} audited changes confirmed (${audited.length} drawn)`;
  }
}

function renderList() {
  const list = $("clips");
  list.replaceChildren();
  shown.forEach((it, i) => {
    const li = el("li", it.video_id, { "data-id": it.video_id });
    const d = state.decisions[it.video_id];
    if (d) { li.classList.add("decided"); li.dataset.decision = d.label; }
    if (i === current) li.classList.add("current");
    li.onclick = () => { current = i; render(); };
    list.append(li);
  });
}

function render() {
  summary();
  renderList();
  const it = shown[current];
  $("clip").hidden = !it;
  if (!it) return;
  location.hash = encodeURIComponent(it.video_id);
  $("clip-id").textContent = it.video_id;
  $("position").textContent = `${current + 1} / ${shown.length}`;
  $("audit-tag").hidden = !it.audit;
  const video = $("video");
  const src = `video/${encodeURIComponent(it.video_id)}?token=${encodeURIComponent(TOKEN)}`;
  video.hidden = Boolean(it.problem);
  $("video-problem").hidden = !it.problem;
  $("video-problem").textContent = it.problem || "";
  if (it.problem) video.removeAttribute("src");
  else if (video.getAttribute("src") !== src) video.setAttribute("src", src);
  $("original").textContent = it.original;
  $("refined").textContent = it.refined;
  $("ensemble").textContent = it.ensemble || "–";
  const d = state.decisions[it.video_id];
  $("decision").textContent = d ? `${d.label} (${d.decided_at})` : "undecided";
  const body = $("votes").tBodies[0];
  body.replaceChildren(...it.votes.map((v) => {
    const tr = el("tr");
    tr.append(el("td", v.source), el("td", v.label),
      el("td", v.probability === null ? "–" : v.probability.toFixed(2)));
    return tr;
  }));
  $("text").textContent = it.text || "(no transcript)";
  $("enriched").replaceChildren(...it.enriched.map((e) => el("p",
    `${e.source}: ${[e.label, e.keywords, e.description].filter(Boolean).join(" · ")}`)));
  for (const b of $("choices").children) {
    b.classList.toggle("chosen", Boolean(d) && b.dataset.label === d.label);
  }
  $("message").textContent = "";
}

async function decide(label) {
  const it = shown[current];
  if (!it) return;
  const response = await api("api/decide", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ video_id: it.video_id, label }),
  });
  if (!response.ok) {
    $("message").textContent = await response.text();
    return;
  }
  const row = await response.json();
  state.decisions[row.video_id] = { label: row.label, decided_at: row.decided_at };
  if (current < shown.length - 1) current += 1;
  render();
}

function move(step) {
  current = Math.min(Math.max(current + step, 0), Math.max(shown.length - 1, 0));
  render();
}

function buildControls() {
  const choices = $("choices");
  for (const choice of state.choices) {
    const b = el("button", choice, { "data-label": choice });
    b.append(el("kbd", keyOf(choice)));
    b.onclick = () => decide(choice);
    choices.append(b);
  }
  const keep = el("button", "keep original", { id: "keep" });
  keep.append(el("kbd", "k"));
  keep.onclick = () => shown[current] && decide(shown[current].original);
  choices.append(keep);
  for (const id of ["filter-original", "filter-vote"]) {
    for (const label of state.choices.filter((c) => c !== "unusable")) $(id).append(el("option", label));
    $(id).onchange = applyFilters;
  }
  $("prev").onclick = () => move(-1);
  $("next").onclick = () => move(1);
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    const choice = state.choices.find((c) => keyOf(c) === key);
    if (choice) decide(choice);
    else if (key === "k") $("keep").click();
    else if (key === "n" || key === "ArrowRight") move(1);
    else if (key === "p" || key === "ArrowLeft") move(-1);
    else return;
    event.preventDefault();
  });
}

async function start() {
  const response = await api("api/state");
  state = await response.json();
  $("rerun").textContent = state.rerun;
  $("problems").replaceChildren(...state.problems.map((p) => el("li", p)));
  buildControls();
  shown = state.items.slice();
  const wanted = decodeURIComponent(location.hash.slice(1));
  current = Math.max(0, shown.findIndex((it) => it.video_id === wanted));
  render();
}

start();
