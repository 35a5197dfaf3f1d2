// The page of `efficientdet serve`: upload an image, draw the boxes the API returns, filter by score.
// Everything runs from this file (no CDN). The API is asked once per image with the server's lowest
// score threshold; the slider then filters those detections locally (what the API would answer for
// that threshold, since detections come sorted by score).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, detections: [], info: null, minScore: 0.001 };
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c",
                "#fabebe", "#008080", "#9a6324", "#800000", "#808000", "#000075"];

function headers() {
  const key = $("key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

async function loadInfo() {
  const res = await fetch("/v1/model", { headers: headers() });
  if (res.status === 401) {
    $("key-row").hidden = false;
    $("model").textContent = "this server needs an API key";
    return;
  }
  if (!res.ok) { setTimeout(loadInfo, 1000); return; }
  const info = await res.json();
  state.info = info;
  state.minScore = info.options.score_threshold_min;
  $("model").textContent = `${info.model}, ${info.input_size} px, ${info.num_classes} classes, ${info.backend}`;
  $("score").value = info.score_threshold_default;
  $("score-value").textContent = Number(info.score_threshold_default).toFixed(2);
}

async function detect(file) {
  document.body.dataset.state = "busy";
  setStatus(`detecting in ${file.name}…`);
  const url = URL.createObjectURL(file);
  const img = new Image();
  const loaded = new Promise((ok, fail) => { img.onload = ok; img.onerror = fail; });
  img.src = url;
  const form = new FormData();
  form.append("file", file, file.name);
  let body;
  try {
    const res = await fetch(`/v1/detect?score_threshold=${state.minScore}`, {
      method: "POST", body: form, headers: headers() });
    body = await res.json();
    if (res.status === 401) $("key-row").hidden = false;
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    await loaded;
  } catch (err) {
    setStatus(String(err.message || err), true);
    document.body.dataset.state = "error";
    return;
  }
  state.image = img;
  state.detections = body.detections;
  setStatus(`${file.name}: ${body.image.width}×${body.image.height}, ${body.detections.length} detection(s) ` +
            `≥ ${state.minScore} in ${body.time_ms.toFixed(0)} ms`);
  render();
  document.body.dataset.state = "done";
}

function shown() {
  const t = Number($("score").value);
  return state.detections.filter((d) => d.score >= t);
}

function render() {
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  if (!state.image) return;
  const img = state.image;
  // draw at the resolution the canvas is shown at (crisp text and lines for small and large images alike);
  // boxes are in image pixels: the transform maps them, `unit` is one screen pixel in image pixels
  const dpr = window.devicePixelRatio || 1;
  const room = Math.max(100, $("view").clientWidth - 20);
  const fit = Math.min(room / img.naturalWidth, (window.innerHeight * 0.75) / img.naturalHeight);
  canvas.width = Math.round(img.naturalWidth * fit * dpr);
  canvas.height = Math.round(img.naturalHeight * fit * dpr);
  canvas.style.width = `${canvas.width / dpr}px`;
  const k = canvas.width / img.naturalWidth;
  canvas.dataset.scale = String(k);
  ctx.setTransform(k, 0, 0, k, 0, 0);
  ctx.drawImage(img, 0, 0);
  const unit = dpr / k;
  const dets = shown();
  const line = 2 * unit;
  const fontPx = 13 * unit;
  ctx.font = `${fontPx}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  const rows = [];
  dets.forEach((d, i) => {
    const [x, y, w, h] = d.bbox;
    ctx.lineWidth = line;
    ctx.strokeStyle = COLORS[d.category_id % COLORS.length];
    ctx.strokeRect(x, y, w, h);
    rows.push(`<tr data-index="${i}"><td>${i + 1}</td><td>${escapeHtml(d.category_name)}</td>` +
              `<td>${d.category_id}</td><td>${d.score.toFixed(3)}</td>` +
              d.bbox.map((v) => `<td>${v.toFixed(1)}</td>`).join("") + "</tr>");
  });
  // labels after all boxes, lowest score first, so that the best detections' labels stay readable
  for (let i = dets.length - 1; i >= 0; i--) {
    const d = dets[i];
    const [x, y] = d.bbox;
    const label = `${d.category_name} ${d.score.toFixed(2)}`;
    const tw = ctx.measureText(label).width + 6 * unit;
    const th = fontPx + 4 * unit;
    const ty = y >= th ? y - th : y;
    ctx.fillStyle = COLORS[d.category_id % COLORS.length];
    ctx.fillRect(x, ty, tw, th);
    ctx.fillStyle = "#fff";
    ctx.fillText(label, x + 3 * unit, ty + 2 * unit);
  }
  $("table").tBodies[0].innerHTML = rows.join("");
  $("count").textContent = String(dets.length);
  $("total").textContent = String(state.detections.length);
  canvas.dataset.boxes = String(dets.length);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                                                     "'": "&#39;" })[c]);
}

$("file").addEventListener("change", (e) => { if (e.target.files.length) detect(e.target.files[0]); });
$("score").addEventListener("input", () => {
  $("score-value").textContent = Number($("score").value).toFixed(2);
  render();
});
$("key").addEventListener("change", loadInfo);
window.addEventListener("resize", render);
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => {
  if (e.dataTransfer.files.length) detect(e.dataTransfer.files[0]);
});
loadInfo();
