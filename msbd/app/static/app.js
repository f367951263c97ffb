// The msbd web app's page: image + mask brush, knobs, run / cancel, progress polling, results.
// The server checks everything (msbd/app/server.py); this page only shows its one-line messages.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { uploadId: null, jobId: null, polling: null, painting: false, last: null, focus: { x: 0.5, y: 0.5 } };
const canvas = $("mask-canvas");
const ctx = canvas.getContext("2d");
const MASK_COLOUR = "#ff3030";
const panes = document.querySelectorAll(".pane");

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function api(url, options = {}) {
  const response = await fetch(url, options);
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const data = isJson ? await response.json() : await response.blob();
  if (!response.ok) throw new Error(isJson && data.error ? data.error : `${response.status} ${response.statusText}`);
  return data;
}

function json(body) {
  return { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
}

// 1. Settings --------------------------------------------------------------------------------------------------

async function loadInfo() {
  const info = await api("/api/info");
  $("model").textContent = `models: ${info.model}`;
  for (const fusion of info.fusions) $("fusion").add(new Option(fusion, fusion));
  const d = info.defaults;
  for (const key of ["margin", "seed", "batch", "repaint_steps"]) $(key).value = d[key];
  $("fusion").value = d.fusion;
  $("decoder_opt").checked = d.decoder_opt;
}

function knobs() {
  const number = (id) => ($(id).value.trim() === "" ? $(id).value : Number($(id).value));
  return { margin: number("margin"), seed: number("seed"), batch: number("batch"),
           repaint_steps: number("repaint_steps"), fusion: $("fusion").value, decoder_opt: $("decoder_opt").checked };
}

// 2. Image and mask ---------------------------------------------------------------------------------------------

async function showImage(upload) {
  state.uploadId = upload.upload_id;
  canvas.width = upload.width;
  canvas.height = upload.height;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const base = $("base");
  await new Promise((resolve, reject) => {
    base.onload = resolve;
    base.onerror = () => reject(new Error("the browser could not show the image"));
    base.src = `/api/uploads/${upload.upload_id}/preview.png`;
  });
  $("editor").hidden = false;
  $("editor-help").textContent = `${upload.width} x ${upload.height} px: paint the region to edit.`;
  $("results").hidden = true;
  if (upload.mask) await drawMask(await api(upload.mask));
  if (upload.prompt) $("prompt").value = upload.prompt;
  say(upload.notes && upload.notes.length ? upload.notes.join(" ") : "image loaded");
}

async function drawMask(blob) {
  const bitmap = await createImageBitmap(blob);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.globalCompositeOperation = "source-over";
  ctx.drawImage(bitmap, 0, 0);
  ctx.globalCompositeOperation = "source-in";          // recolour the white mask for display
  ctx.fillStyle = MASK_COLOUR;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.globalCompositeOperation = "source-over";
}

async function uploadImage(file) {
  say(`uploading ${file.name} ...`);
  try {
    await showImage(await api(`/api/image?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file }));
  } catch (err) {
    say(err.message, true);
  }
}

async function uploadMask(file) {
  if (!state.uploadId) return say("upload an image (or render a toy scene) first", true);
  try {
    const url = `/api/uploads/${state.uploadId}/mask?name=${encodeURIComponent(file.name)}`;
    await drawMask(await api(url, { method: "POST", body: file }));
    say("mask loaded: paint or erase to change it");
  } catch (err) {
    say(err.message, true);
  }
}

async function renderToy() {
  say("rendering a toy scene ...");
  try {
    await showImage(await api("/api/toy-scene", json({ task: Number($("toy-task").value),
                                                       size: Number($("toy-size").value) })));
  } catch (err) {
    say(err.message, true);
  }
}

function maskPng() {
  // White where painted, black elsewhere, at the image's size (what msbd.io.load_mask reads)
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const c = out.getContext("2d");
  c.drawImage(canvas, 0, 0);
  c.globalCompositeOperation = "source-in";
  c.fillStyle = "#fff";
  c.fillRect(0, 0, out.width, out.height);
  c.globalCompositeOperation = "destination-over";
  c.fillStyle = "#000";
  c.fillRect(0, 0, out.width, out.height);
  return out.toDataURL("image/png");
}

// 3. The brush ---------------------------------------------------------------------------------------------------

function canvasPoint(event) {
  const box = canvas.getBoundingClientRect();
  return { x: (event.clientX - box.left) * canvas.width / box.width,
           y: (event.clientY - box.top) * canvas.height / box.height, scale: canvas.width / box.width };
}

function stroke(from, to) {
  const eraser = document.querySelector("input[name=tool]:checked").value === "eraser";
  ctx.globalCompositeOperation = eraser ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = MASK_COLOUR;
  ctx.lineWidth = Number($("brush-size").value) * to.scale;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x + 0.01, to.y);
  ctx.stroke();
  ctx.globalCompositeOperation = "source-over";
}

canvas.addEventListener("pointerdown", (event) => {
  state.painting = true;
  state.last = canvasPoint(event);
  canvas.setPointerCapture(event.pointerId);
  stroke(state.last, state.last);
});
canvas.addEventListener("pointermove", (event) => {
  if (!state.painting) return;
  const point = canvasPoint(event);
  stroke(state.last, point);
  state.last = point;
});
for (const name of ["pointerup", "pointercancel"]) canvas.addEventListener(name, () => { state.painting = false; });

// 4. Run, progress, cancel ---------------------------------------------------------------------------------------

async function run() {
  if (!state.uploadId) return say("upload an image (or render a toy scene) first", true);
  try {
    const job = await api("/api/edit", json({ upload_id: state.uploadId, prompt: $("prompt").value,
                                              mask_png: maskPng(), ...knobs() }));
    state.jobId = job.job_id;
    $("run").disabled = true;
    $("cancel").disabled = false;
    $("results").hidden = true;
    $("progress").hidden = false;
    show(job);
    state.polling = setInterval(poll, 400);
  } catch (err) {
    say(err.message, true);
  }
}

async function poll() {
  try {
    show(await api(`/api/jobs/${state.jobId}`));
  } catch (err) {
    stopPolling();
    say(err.message, true);
  }
}

function stopPolling() {
  clearInterval(state.polling);
  $("run").disabled = false;
  $("cancel").disabled = true;
}

function setBar(bar, value, max) {
  bar.max = Math.max(max, 1);
  if (value === null) bar.removeAttribute("value"); else bar.value = Math.min(value, bar.max);
}

function show(job) {
  const p = job.progress;
  const steps = p.steps_total > 0 && p.steps_done <= p.steps_total ? p.steps_done : null;   // null: unknown total
  setBar($("stage-bar"), p.stage + (steps === null ? 0 : steps / Math.max(p.steps_total, 1)), p.n_stages);
  $("stage-label").textContent = `${Math.min(p.stage + 1, p.n_stages)} of ${p.n_stages}: ${p.stage_name || "waiting"}`;
  setBar($("step-bar"), job.state === "queued" ? 0 : steps, p.steps_total);
  $("step-label").textContent = steps === null ? `${p.steps_done} UNet calls` : `${p.steps_done}/${p.steps_total}`;
  $("tile-row").hidden = p.tiles_total === 0;
  setBar($("tile-bar"), p.tiles_done, p.tiles_total);
  $("tile-label").textContent = `${p.tiles_done}/${p.tiles_total}`;
  say([job.message, ...(job.notes || [])].join(" | "), job.state === "error");
  if (["done", "error", "cancelled"].includes(job.state)) stopPolling();
  if (job.state === "done") showResults(job.result);
}

async function cancel() {
  try {
    show(await api(`/api/jobs/${state.jobId}/cancel`, { method: "POST" }));
  } catch (err) {
    say(err.message, true);
  }
}

// 5. Results -----------------------------------------------------------------------------------------------------

function figure(src, caption, chosen = false) {
  const fig = document.createElement("figure");
  if (chosen) fig.className = "chosen";
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

function showResults(result) {
  const file = (name) => `/api/jobs/${state.jobId}/files/${name}`;
  $("compare-input").src = `/api/uploads/${state.uploadId}/preview.png`;
  $("compare-output").src = file("output.png");
  $("download").href = `${file("output.png")}?download=true`;
  $("candidates").replaceChildren(...result.candidates.map((c, k) => figure(file(c.file),
    `#${k}` + (c.score === null ? "" : ` CLIP ${c.score.toFixed(4)}`) + (c.chosen ? " (kept)" : ""), c.chosen)));
  $("stages").replaceChildren(...result.stages.map((s) => figure(file(s.file),
    `${s.name}: ${s.size[1]}x${s.size[0]} px, ${s.seconds} s` + (s.tiles !== "1/1" ? `, tiles ${s.tiles}` : ""))));
  $("results").hidden = false;
  state.focus = maskCentre();
  $("compare-output").onload = setZoom;
}

function maskCentre() {
  // Centre of the painted region as fractions of the image (from a small copy of the brush layer)
  const small = document.createElement("canvas");
  small.width = small.height = 128;
  const c = small.getContext("2d");
  c.drawImage(canvas, 0, 0, 128, 128);
  const data = c.getImageData(0, 0, 128, 128).data;
  let n = 0, sx = 0, sy = 0;
  for (let i = 3; i < data.length; i += 4) {
    if (data[i] > 0) { n += 1; sx += ((i - 3) / 4) % 128; sy += Math.floor((i - 3) / 4 / 128); }
  }
  return n ? { x: (sx / n + 0.5) / 128, y: (sy / n + 0.5) / 128 } : { x: 0.5, y: 0.5 };
}

function setZoom() {
  // Both panes zoom about the centre of the view (at first, the centre of the mask) and scroll together
  const zoom = Number($("zoom").value);
  $("zoom-label").textContent = `${zoom}x`;
  for (const id of ["compare-input", "compare-output"]) $(id).style.width = `${zoom * 100}%`;
  for (const pane of panes) {
    pane.scrollLeft = state.focus.x * pane.scrollWidth - pane.clientWidth / 2;
    pane.scrollTop = state.focus.y * pane.scrollHeight - pane.clientHeight / 2;
  }
}

function syncScroll(from, to) {
  from.addEventListener("scroll", () => {
    to.scrollLeft = from.scrollLeft;
    to.scrollTop = from.scrollTop;
    // the view's centre, on each axis the image overflows (elsewhere the pane shows all of it)
    const { scrollLeft, scrollTop, scrollWidth, scrollHeight, clientWidth, clientHeight } = from;
    if (scrollWidth > clientWidth) state.focus.x = (scrollLeft + clientWidth / 2) / scrollWidth;
    if (scrollHeight > clientHeight) state.focus.y = (scrollTop + clientHeight / 2) / scrollHeight;
  });
}

// 6. Wiring ------------------------------------------------------------------------------------------------------

$("image-file").addEventListener("change", (e) => e.target.files[0] && uploadImage(e.target.files[0]));
$("mask-file").addEventListener("change", (e) => e.target.files[0] && uploadMask(e.target.files[0]));
$("toy-render").addEventListener("click", renderToy);
$("mask-clear").addEventListener("click", () => ctx.clearRect(0, 0, canvas.width, canvas.height));
$("run").addEventListener("click", run);
$("cancel").addEventListener("click", cancel);
$("zoom").addEventListener("input", setZoom);
syncScroll(panes[0], panes[1]);
syncScroll(panes[1], panes[0]);
loadInfo().catch((err) => say(`cannot reach the server: ${err.message}`, true));
