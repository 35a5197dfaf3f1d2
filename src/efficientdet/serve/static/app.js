// The page of `efficientdet serve`: upload an image, draw the boxes the API returns, filter by score.
// Everything runs from this file (no CDN). The API is asked once per image with the server's lowest
// score threshold; the slider then filters those detections locally (what the API would answer for
// that threshold, since detections come sorted by score). A model that segments (task "segment" or
// "detect,segment" in /v1/model) is asked on /v1/segment instead: its class-index mask is drawn as a
// semi-transparent overlay (the "show mask" toggle) and its classes are listed with their pixel counts.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, detections: [], info: null, minScore: 0.001, detects: true, segments: false,
                overlay: null, classes: [] };
const MASK_ALPHA = 0.5;
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
  const task = info.task || "detect";
  state.detects = task !== "segment";
  state.segments = task.includes("segment");
  if (info.options) state.minScore = info.options.score_threshold_min;
  $("model").textContent = `${info.model}, ${info.input_size} px, ${info.num_classes} classes, ${info.backend}` +
                           (task === "detect" ? "" : `, ${task}`);
  if (state.detects) {
    $("score").value = info.score_threshold_default;
    $("score-value").textContent = Number(info.score_threshold_default).toFixed(2);
  }
  $("score-row").hidden = !state.detects;
  $("box-count").hidden = !state.detects;
  $("table").hidden = !state.detects;
  $("mask-row").hidden = !state.segments;
  $("classes").hidden = !state.segments;
  document.body.dataset.task = task;
}

// The Pascal VOC colour of a class index (the palette of the mask PNG): the bits of i spread over R, G, B.
function vocColour(i) {
  let r = 0, g = 0, b = 0;
  for (let j = 0, c = i; j < 8; j++, c >>= 3) {
    r |= ((c >> 0) & 1) << (7 - j);
    g |= ((c >> 1) & 1) << (7 - j);
    b |= ((c >> 2) & 1) << (7 - j);
  }
  return [r, g, b];
}

// The base64 palette PNG -> a canvas of the same size with the class colours, background transparent.
async function maskOverlay(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }),
                                         { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const overlay = document.createElement("canvas");
  overlay.width = bitmap.width;
  overlay.height = bitmap.height;
  const octx = overlay.getContext("2d");
  octx.drawImage(bitmap, 0, 0);
  const data = octx.getImageData(0, 0, overlay.width, overlay.height);
  const px = data.data;
  for (let k = 0; k < px.length; k += 4) {  // class 0 (background) is the palette's only black
    px[k + 3] = px[k] || px[k + 1] || px[k + 2] ? 255 : 0;
  }
  octx.putImageData(data, 0, 0);
  return overlay;
}

async function detect(file) {
  document.body.dataset.state = "busy";
  setStatus(`${state.segments ? "segmenting" : "detecting in"} ${file.name}…`);
  const url = URL.createObjectURL(file);
  const img = new Image();
  const loaded = new Promise((ok, fail) => { img.onload = ok; img.onerror = fail; });
  img.src = url;
  const form = new FormData();
  form.append("file", file, file.name);
  let body;
  try {
    const endpoint = state.segments ? "/v1/segment" : "/v1/detect";
    const query = state.detects ? `?score_threshold=${state.minScore}` : "";
    const res = await fetch(endpoint + query, { method: "POST", body: form, headers: headers() });
    body = await res.json();
    if (res.status === 401) $("key-row").hidden = false;
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    await loaded;
    state.overlay = body.mask ? await maskOverlay(body.mask) : null;
  } catch (err) {
    setStatus(String(err.message || err), true);
    document.body.dataset.state = "error";
    return;
  }
  state.image = img;
  state.detections = body.detections || [];
  state.classes = body.classes || [];
  const found = [];
  if (state.detects) found.push(`${state.detections.length} detection(s) ≥ ${state.minScore}`);
  if (state.segments) found.push(`${state.classes.length} class(es) in the mask`);
  setStatus(`${file.name}: ${body.image.width}×${body.image.height}, ${found.join(", ")} ` +
            `in ${body.time_ms.toFixed(0)} ms`);
  renderClasses(body.image.width * body.image.height);
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
  const maskShown = Boolean(state.overlay) && $("show-mask").checked;
  if (maskShown) {  // class pixels stay sharp (nearest), blended over the image
    ctx.save();
    ctx.globalAlpha = MASK_ALPHA;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(state.overlay, 0, 0);
    ctx.restore();
  }
  canvas.dataset.mask = maskShown ? "on" : "off";
  const unit = dpr / k;
  const dets = shown();
  const line = 2 * unit;
  const fontPx = 13 * unit;
  ctx.font = `${fontPx}px system-ui, sans-serif`;
  ctx.textBaseline = "top";
  // boxes lowest score first, so that where boxes overlap the better one is drawn on top
  ctx.lineWidth = line;
  for (let i = dets.length - 1; i >= 0; i--) {
    const [x, y, w, h] = dets[i].bbox;
    ctx.strokeStyle = COLORS[dets[i].category_id % COLORS.length];
    ctx.strokeRect(x, y, w, h);
  }
  const rows = [];
  dets.forEach((d, i) => {
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

function renderClasses(total) {
  $("classes").tBodies[0].innerHTML = state.classes.map((c) => {
    const [r, g, b] = vocColour(c.id);
    return `<tr><td><span class="swatch" style="background: rgb(${r}, ${g}, ${b})"></span></td>` +
           `<td>${escapeHtml(c.name)}</td><td>${c.id}</td><td>${c.pixels}</td>` +
           `<td>${(100 * c.pixels / total).toFixed(1)}</td></tr>`;
  }).join("");
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
$("show-mask").addEventListener("change", render);
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
