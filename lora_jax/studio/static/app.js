// The studio's page: four tabs over the JSON API under /api/training/. No framework, no build
// step, nothing fetched from anywhere but this server.
"use strict";

const API = "/api/training";
const TOKEN = new URLSearchParams(location.search).get("token") || "";
let followed = null;  // the job id the Train tab follows

function notice(text, isError) {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.className = isError ? "error" : "";
}

async function api(path, options = {}) {
  options.headers = Object.assign({}, options.headers || {});
  if (TOKEN) options.headers["X-Studio-Token"] = TOKEN;
  const response = await fetch(API + path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return body;
}

function withToken(url) {
  return TOKEN ? `${url}?token=${encodeURIComponent(TOKEN)}` : url;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  row.appendChild(td);
  return td;
}

function button(row, label, onClick) {
  const td = document.createElement("td");
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", onClick);
  td.appendChild(b);
  row.appendChild(td);
  return b;
}

const when = (t) => new Date(t * 1000).toLocaleString();
const num = (x, digits = 4) => (x === null || x === undefined ? "" : Number(x).toFixed(digits));

// Tabs.
document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("#tabs button").forEach((x) => x.classList.remove("active"));
  document.querySelectorAll("section.tab").forEach((x) => x.classList.remove("active"));
  b.classList.add("active");
  document.getElementById(b.dataset.tab).classList.add("active");
  notice("");
  refreshAll();
}));

// 1 Datasets.
async function refreshDatasets() {
  const rows = await api("/datasets");
  const body = document.querySelector("#dataset-table tbody");
  body.replaceChildren();
  const select = document.querySelector("#train-form [name=dataset_id]");
  const chosen = select.value;
  select.replaceChildren();
  for (const d of rows) {
    const tr = document.createElement("tr");
    cell(tr, d.name); cell(tr, d.style); cell(tr, d.kind === "song" ? "song clips" : "MIDI");
    cell(tr, d.state + (d.message ? `: ${d.message}` : "")).className = `state-${d.state}`;
    cell(tr, d.n_files); cell(tr, when(d.created)); cell(tr, d.id);
    button(tr, "Delete", async () => {
      try { await api(`/datasets/${d.id}`, { method: "DELETE" }); notice(`deleted ${d.name}`); }
      catch (e) { notice(e.message, true); }
      refreshDatasets();
    });
    body.appendChild(tr);
    if (d.state === "ready") {
      const kind = d.kind === "song" ? "song clips" : "MIDI";
      select.appendChild(new Option(`${d.name} (${d.style}, ${kind})`, d.id));
    }
  }
  if (chosen) select.value = chosen;
  return rows;
}

async function loadSources() {
  const sources = await api("/dataset-sources");
  const styles = document.getElementById("corpus-styles");
  for (const g of sources.corpus) {
    styles.appendChild(new Option(g.genre));
    for (const sub of g.sub_styles) styles.appendChild(new Option(`${g.genre}/${sub}`));
  }
  const collections = document.querySelector("#build-form [name=collection]");
  for (const c of sources.performances) {
    collections.appendChild(new Option(`${c.collection}: ${c.n_files} files, ${c.description}`,
                                       c.collection));
  }
}

document.getElementById("build-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target.elements;
  const request = { name: form.name.value, source: form.source.value, style: form.style.value };
  if (request.source === "corpus" && form.max_pieces.value) {
    request.max_pieces = Number(form.max_pieces.value);
  }
  if (request.source === "performances") request.collection = form.collection.value;
  if (request.source === "folder") request.path = form.path.value;
  try {
    const d = await api("/build-dataset", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request) });
    notice(`building ${d.name} from ${request.source}: see its state below`);
  } catch (e) { notice(e.message, true); }
  refreshDatasets();
});

document.getElementById("dataset-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  notice("decoding and packing…");
  try {
    const d = await api("/prepare-dataset", { method: "POST", body: form });
    document.getElementById("dataset-report").textContent = d.report.lines.join("\n");
    notice(`dataset ${d.name} ready: ${d.files.length} files`);
    event.target.reset();
  } catch (e) { notice(e.message, true); }
  refreshDatasets();
});

// 2 User audio.
const AUDIO_COLUMNS = ["genre", "bpm", "key", "mood", "instruments", "description", "lyrics"];
document.getElementById("audio-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = event.target.elements.files.files;
  const body = document.querySelector("#audio-table tbody");
  body.replaceChildren();
  const rows = {};
  for (const f of files) {
    const tr = document.createElement("tr");
    cell(tr, f.name);
    AUDIO_COLUMNS.forEach((key) => {
      const td = cell(tr, "");
      td.contentEditable = "true";
      td.addEventListener("blur", () => saveCell(tr, key, td.textContent));
    });
    body.appendChild(tr);
    rows[f.name] = tr;
  }
  const send = (path) => {
    const form = new FormData();
    for (const f of files) form.append("files", f);
    return api(path, { method: "POST", body: form });
  };
  try {
    const results = await send("/analyze-audio");
    for (const r of results) {
      const tr = rows[r.file];
      if (!tr) continue;
      AUDIO_COLUMNS.forEach((key, i) => {
        const value = r.analysis[key] ?? (key === "bpm" ? r.analysis.tempo : undefined);
        if (value !== undefined) tr.children[i + 1].textContent = String(value);
      });
    }
    notice(`analysed ${results.length} files`);
  } catch (e) { notice(e.message, true); }
});

// Once the rows are a song dataset's clips, an edited cell is saved to the clip at once.
async function saveCell(tr, key, text) {
  if (!tr.dataset.fileId) return;
  try {
    await api(`/datasets/${tr.dataset.datasetId}/files/${tr.dataset.fileId}/meta`, {
      method: "PUT", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ [key]: text }) });
    notice(`saved ${key} of ${tr.children[0].textContent}`);
  } catch (e) { notice(e.message, true); }
}

function audioTable() {
  const table = {};
  for (const tr of document.querySelectorAll("#audio-table tbody tr")) {
    const row = {};
    AUDIO_COLUMNS.forEach((key, i) => { row[key] = tr.children[i + 1].textContent; });
    table[tr.children[0].textContent] = row;
  }
  return table;
}

document.getElementById("audio-dataset-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const files = document.querySelector("#audio-form [name=files]").files;
  if (!files.length) { notice("choose audio files above first", true); return; }
  const form = event.target.elements;
  const upload = (path, extra) => {
    const body = new FormData();
    for (const f of files) body.append("files", f);
    for (const [k, v] of Object.entries(extra)) body.append(k, v);
    return api(path, { method: "POST", body });
  };
  notice(form.kind.value === "song" ? "decoding the clips…" : "transcribing and packing…");
  try {
    const d = await upload("/prepare-dataset", {
      name: form.name.value, style: form.style.value, kind: form.kind.value,
      metadata: JSON.stringify(audioTable()) });
    const done = [`dataset ${d.name} ready: ${d.files.length} files`];
    if (d.kind === "song") {  // later edits of a row go to its clip
      for (const tr of document.querySelectorAll("#audio-table tbody tr")) {
        const name = tr.children[0].textContent;
        const clip = d.files.find((f) => f.kind === "audio" && f.name === name);
        if (clip) { tr.dataset.fileId = clip.id; tr.dataset.datasetId = d.id; }
      }
      done.push("edits to the table are saved to the clips");
    }
    if (form.split.checked) {
      const clips = await upload("/split-audio", { dataset_id: d.id });
      done.push(`${clips.reduce((n, r) => n + r.outputs.length, 0)} clips kept`);
    }
    if (form.stems.checked) {
      const stems = await upload("/separate-stems", { dataset_id: d.id });
      done.push(`${stems.reduce((n, r) => n + r.outputs.length, 0)} stems kept`);
    }
    notice(done.join(", "));
  } catch (e) { notice(e.message, true); }
  refreshDatasets();
});

// 3 Train.
async function refreshParents() {
  const select = document.querySelector("#train-form [name=parent_adapter_id]");
  const chosen = select.value;
  select.replaceChildren(new Option("(none)", ""));
  for (const a of await api("/lora-adapters")) {
    if (a.level === "parent") select.appendChild(new Option(`${a.name} (${a.style})`, a.id));
  }
  select.value = chosen;
}

document.getElementById("train-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const request = {};
  const song = form.get("type") === "song";
  for (const [key, value] of form.entries()) {
    if (value === "") continue;
    if (song && ["level", "parent_adapter_id", "seq_len"].includes(key)) continue;  // MIDI only
    request[key] = ["name", "dataset_id", "type", "level", "parent_adapter_id"].includes(key)
      ? value : Number(value);
  }
  try {
    const job = await api("/train-lora", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request) });
    followed = job.id;
    notice(`job ${job.id} queued`);
  } catch (e) { notice(e.message, true); }
  refreshJobs();
});

document.getElementById("stop").addEventListener("click", async () => {
  try {
    await api("/stop-training", { method: "POST", headers: { "Content-Type": "application/json" },
                                  body: JSON.stringify({ job_id: followed }) });
    notice("stopping: the run writes a checkpoint first");
  } catch (e) { notice(e.message, true); }
});

document.getElementById("resume").addEventListener("click", async () => {
  try { await api(`/jobs/${followed}/resume`, { method: "POST" }); notice("queued to resume"); }
  catch (e) { notice(e.message, true); }
});

function drawLoss(rows) {
  const canvas = document.getElementById("loss-plot");
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, canvas.width, canvas.height);
  const points = rows.flatMap((r) => [r.train_loss, r.val_loss]).filter((x) => x !== null);
  if (rows.length < 2 || points.length === 0) return;
  const pad = 36, w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
  const maxStep = rows[rows.length - 1].step || 1;
  const lo = Math.min(...points), hi = Math.max(...points);
  const x = (s) => pad + (w * s) / maxStep;
  const y = (v) => pad + h - (h * (v - lo)) / (hi - lo || 1);
  g.strokeStyle = "#999"; g.strokeRect(pad, pad, w, h);
  g.fillStyle = "#444"; g.font = "11px sans-serif";
  g.fillText(hi.toFixed(3), 2, pad + 4); g.fillText(lo.toFixed(3), 2, pad + h);
  g.fillText(`step ${maxStep}`, pad + w - 50, pad + h + 14);
  for (const [key, color] of [["train_loss", "#2a62c9"], ["val_loss", "#e07b00"]]) {
    const series = rows.filter((r) => r[key] !== null);
    g.strokeStyle = color; g.fillStyle = color; g.beginPath();
    series.forEach((r, i) => (i ? g.lineTo(x(r.step), y(r[key])) : g.moveTo(x(r.step), y(r[key]))));
    g.stroke();
    series.forEach((r) => g.fillRect(x(r.step) - 2, y(r[key]) - 2, 4, 4));
  }
  g.fillStyle = "#2a62c9"; g.fillText("train loss", pad + 6, pad + 14);
  g.fillStyle = "#e07b00"; g.fillText("validation loss", pad + 76, pad + 14);
}

async function refreshFollowed() {
  if (!followed) return;
  const { job } = await api(`/training-status?job_id=${followed}`);
  const eta = job.eta_s ? `, ${Math.round(job.eta_s)} s left` : "";
  document.getElementById("progress-text").textContent =
    `${job.name}: ${job.state}, step ${job.step}/${job.total_steps ?? "?"}, loss ` +
    `${num(job.train_loss)}, val ${num(job.val_loss)}${eta} ${job.message}`;
  const bar = document.getElementById("progress-bar");
  bar.max = job.total_steps || 1; bar.value = job.step || 0;
  document.getElementById("stop").disabled = !["queued", "running"].includes(job.state);
  document.getElementById("resume").disabled =
    !["stopped", "interrupted", "failed"].includes(job.state);
  drawLoss(await api(`/jobs/${followed}/metrics`));
  const log = document.getElementById("log");
  const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.textContent = await api(`/jobs/${followed}/log`);
  if (atEnd) log.scrollTop = log.scrollHeight;  // follow the end unless the user scrolled up
}

async function refreshJobs() {
  const jobs = await api("/jobs");
  if (!followed && jobs.length) followed = jobs[0].id;
  const body = document.querySelector("#job-table tbody");
  body.replaceChildren();
  for (const j of jobs) {
    const tr = document.createElement("tr");
    cell(tr, j.name); cell(tr, j.level); cell(tr, j.state);
    cell(tr, `${j.step ?? 0}/${j.total_steps ?? "?"}`); cell(tr, num(j.train_loss));
    cell(tr, num(j.val_loss)); cell(tr, j.message);
    button(tr, j.id === followed ? "Following" : "Follow", () => { followed = j.id; refreshJobs(); });
    body.appendChild(tr);
  }
  await refreshFollowed();
}

// 4 Adapters.
async function refreshAdapters() {
  const body = document.querySelector("#adapter-table tbody");
  body.replaceChildren();
  for (const a of await api("/lora-adapters")) {
    const tr = document.createElement("tr");
    cell(tr, a.name); cell(tr, when(a.created)); cell(tr, a.steps); cell(tr, a.level);
    cell(tr, a.style); cell(tr, a.base); cell(tr, num(a.best_val_loss));
    const td = document.createElement("td");
    const link = document.createElement("a");
    link.href = withToken(`${API}/lora-adapters/${a.id}/download`);
    link.textContent = "Download";
    td.appendChild(link);
    tr.appendChild(td);
    button(tr, "Listen", () => listen(a));
    button(tr, "Delete", async () => {
      try { await api(`/lora-adapters/${a.id}`, { method: "DELETE" }); notice(`deleted ${a.name}`); }
      catch (e) { notice(e.message, true); }
      refreshAdapters();
    });
    body.appendChild(tr);
  }
}

async function listen(adapter) {
  const seed = Number(document.getElementById("listen-seed").value || 0);
  notice(`sampling and rendering ${adapter.name} and the base, seed ${seed}…`);
  try {
    const made = await api(`/lora-adapters/${adapter.id}/listen`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ seed }) });
    const withToken2 = (url) => (TOKEN ? `${url}&token=${encodeURIComponent(TOKEN)}` : url);
    document.getElementById("listen-label").textContent = `${adapter.name}, seed ${seed}`;
    document.getElementById("listen-adapter").src = withToken2(made.adapter_url);
    document.getElementById("listen-base").src = withToken2(made.base_url);
    notice(`${adapter.name} and the base, seed ${seed}: rendered`);
    document.getElementById("listen-adapter").play().catch(() => {});  // may need a click
  } catch (e) { notice(e.message, true); }
}

async function refreshAll() {
  try {
    await refreshDatasets();
    await refreshParents();
    await refreshJobs();
    await refreshAdapters();
  } catch (e) { notice(e.message, true); }
}

// The song option is off, with the reason beside it, unless the server has a --song_base.
async function loadSongBase() {
  const base = await api("/song-base");
  const option = document.querySelector("#train-form [name=type] option[value=song]");
  option.disabled = !base.configured;
  option.title = base.configured ? "" : base.message;
  document.getElementById("song-base-note").textContent = base.configured
    ? `song base: ${base.model_pt} (${base.num_layers} layers, width ${base.dim})`
    : `song model LoRA is off: ${base.message}`;
}

// MIDI-only fields are hidden for a song job.
document.querySelector("#train-form [name=type]").addEventListener("change", (event) => {
  const song = event.target.value === "song";
  for (const name of ["level", "parent_adapter_id", "seq_len"]) {
    document.querySelector(`#train-form [name=${name}]`).closest("label").hidden = song;
  }
});

loadSources().catch((e) => notice(e.message, true));
loadSongBase().catch((e) => notice(e.message, true));
refreshAll();
setInterval(() => {
  const tab = document.querySelector("#tabs button.active").dataset.tab;
  const poll = { train: refreshJobs, adapters: refreshAdapters, datasets: refreshDatasets }[tab];
  const work = poll ? poll() : null;
  if (work) work.catch((e) => notice(e.message, true));
}, 1000);
