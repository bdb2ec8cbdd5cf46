"""The page ``medseg.serve`` serves at ``/``: three planes on plain canvases, no script libraries (works offline).

Left click: positive click for the chosen class; right click (or shift + left): negative click. A 3D case is shown
in the radiological convention from the orientation the server sends (``axes`` of the case's summary): axial and
coronal views with the patient's right on the left, anterior (axial) or superior (coronal, sagittal) up, the
sagittal view with anterior on the left; a 2D picture as stored (rows top down). The token, if
the server has one, comes from the page address's fragment (``/#token=T``) and goes out as a bearer header.
"""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medseg.serve</title><link rel="icon" href="data:,">
<style>
body{font:14px sans-serif;margin:8px;background:#1e1e1e;color:#ddd}
#bar>*{margin-right:6px} .views{display:flex;gap:8px;margin-top:8px;flex-wrap:wrap}
.view{display:flex;flex-direction:column;align-items:center}
canvas{image-rendering:pixelated;background:#000;cursor:crosshair}
#busy{visibility:hidden;color:#fc6} #busy.on{visibility:visible}
#status{margin-top:6px;color:#9c9;min-height:1.2em}
</style></head><body>
<div id="bar">
 <select id="cases"></select><button id="open">Open</button>
 <input type="file" id="file" title="a NIfTI/NRRD/MHA file, or a DICOM series as one .zip"><button id="upload">Upload</button>
 class <select id="klass"></select>
 level <input id="level" type="number" value="60" style="width:5em">
 width <input id="width" type="number" value="400" style="width:5em">
 <button id="undo">Undo</button><button id="save">Save</button>
 <span id="busy">&#9203; working&hellip;</span>
</div>
<div class="views">
 <div class="view"><canvas id="c0"></canvas><input type="range" id="s0"><span id="n0">axial</span></div>
 <div class="view"><canvas id="c1"></canvas><input type="range" id="s1"><span id="n1">coronal</span></div>
 <div class="view"><canvas id="c2"></canvas><input type="range" id="s2"><span id="n2">sagittal</span></div>
</div>
<div id="status">left click: add (positive), right or shift-click: remove (negative)</div>
<script>
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {"Authorization": "Bearer " + token} : {};
const COLOURS = [[0,0,0],[255,60,60],[60,160,255],[80,230,80],[255,220,40],[220,80,255]];
let caseName = null, shape = null, spacing = [1,1,1], image = null, mask = null, pos = [0,0,0], flat = false;
const $ = id => document.getElementById(id);
let pending = 0;
function busy(d){ pending += d; $("busy").classList.toggle("on", pending > 0); document.body.dataset.busy = pending;
  for (const id of ["open", "upload", "undo", "save"]) $(id).disabled = pending > 0; }  // no double submission
// the answer's body ("json" or "arrayBuffer"), read while the hourglass is on (a volume downloads after its headers)
async function api(path, opts = {}, as = "json"){
  busy(1);
  try {
    const r = await fetch(path, {...opts, headers: {...headers, ...(opts.headers || {})}});
    if (!r.ok){ let d = r.statusText; try { d = (await r.json()).detail; } catch (e) {} throw new Error(d); }
    return await r[as]();
  } finally { busy(-1); }
}
// one user action at a time: ignored while a request runs, the hourglass on (buttons disabled) until it ends
async function task(fn){ if (pending) return; busy(1); try { await fn(); } finally { busy(-1); } }
function say(t){ $("status").textContent = t; }
async function loadInfo(){
  const info = await api("/api/info");
  for (const [v, n] of Object.entries(info.labels)) if (v !== "0"){
    const o = document.createElement("option"); o.value = v; o.textContent = n; $("klass").appendChild(o); }
  const cases = await api("/api/cases");
  for (const n of cases.input){ const o = document.createElement("option"); o.value = o.textContent = n; $("cases").appendChild(o); }
  document.title = "medseg.serve: " + info.bundle + (info.guided ? " (click-guided)" : "");
}
async function show(summary){
  // both volumes first: the views keep drawing the case shown until then
  const img = new Float32Array(await api(`/api/cases/${summary.case}/image`, {}, "arrayBuffer"));
  const m = new Uint8Array(await api(`/api/cases/${summary.case}/mask`, {}, "arrayBuffer"));
  caseName = summary.case; shape = summary.shape; spacing = summary.spacing; image = img; mask = m;
  flat = shape.length === 2;  // a 2D picture: one slice, rows top down, clicks [i, j]
  if (flat) shape = [...shape, 1];
  pos = shape.map(n => Math.floor(n / 2));
  PLANES = layout(flat ? null : summary.axes);
  PLANES.forEach((pl, p) => { $("s" + p).max = shape[pl.fixed] - 1; $("s" + p).value = pos[pl.fixed];
    $("n" + p).textContent = pl.name; });
  draw();
  const opened = summary.clicks ? `, ${summary.clicks} click(s) kept` : "";
  const before = (summary.saved || []).length ? `; saved earlier: ${summary.saved.join(", ")} (Save replaces them)` : "";
  say(`${caseName}: ${shape.join("x")} voxels, automatic mask in ${summary.automatic_seconds} s${opened}${before}`);
}
async function refreshMask(){
  mask = new Uint8Array(await api(`/api/cases/${caseName}/mask`, {}, "arrayBuffer"));
  draw();
}
// plane p (0 axial, 1 coronal, 2 sagittal): voxel axis u across the canvas, v down it, fixed by the slider; flipU:
// the index falls left to right, flipV: it falls top down. axes[i] = [RAS axis, +1 if index i grows towards R/A/S]
function layout(axes){
  if (!axes){  // a 2D picture as stored; a 3D case without an orientation by its index axes
    if (flat) return [{u:0, v:1, fixed:2, flipU:false, flipV:false, name:"picture"}, {u:0, v:2, fixed:1, flipU:false,
      flipV:true, name:"(i, k)"}, {u:1, v:2, fixed:0, flipU:false, flipV:true, name:"(j, k)"}];
    return [{u:0, v:1, fixed:2, flipU:false, flipV:true, name:"axial (i across, j up)"},
            {u:0, v:2, fixed:1, flipU:false, flipV:true, name:"coronal (i across, k up)"},
            {u:1, v:2, fixed:0, flipU:false, flipV:true, name:"sagittal (j across, k up)"}];
  }
  const vox = [], grows = [];
  axes.forEach(([w, s], i) => { vox[w] = i; grows[w] = s > 0; });
  // radiological: screen right is the patient's left (x falls), anterior up in axial, superior up, and the
  // sagittal view has anterior on the left (y falls left to right)
  return [{u:vox[0], v:vox[1], fixed:vox[2], flipU:grows[0], flipV:grows[1], name:"axial (R left, A up)"},
          {u:vox[0], v:vox[2], fixed:vox[1], flipU:grows[0], flipV:grows[2], name:"coronal (R left, S up)"},
          {u:vox[1], v:vox[2], fixed:vox[0], flipU:grows[1], flipV:grows[2], name:"sagittal (A left, S up)"}];
}
let PLANES = layout(null);
function voxelIndex(i, j, k){ return (i * shape[1] + j) * shape[2] + k; }
function draw(){
  if (!image) return;
  const level = +$("level").value, width = Math.max(1, +$("width").value), lo = level - width / 2;
  PLANES.forEach((pl, p) => {
    const c = $("c" + p), w = shape[pl.u], h = shape[pl.v];
    c.width = w; c.height = h;
    const scale = 320 / Math.max(w * spacing[pl.u], h * spacing[pl.v]);
    c.style.width = (w * spacing[pl.u] * scale) + "px"; c.style.height = (h * spacing[pl.v] * scale) + "px";
    const ctx = c.getContext("2d"), img = ctx.createImageData(w, h);
    const ijk = [0, 0, 0]; ijk[pl.fixed] = pos[pl.fixed];
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++){
      ijk[pl.u] = pl.flipU ? w - 1 - x : x; ijk[pl.v] = pl.flipV ? h - 1 - y : y;
      const n = voxelIndex(ijk[0], ijk[1], ijk[2]);
      let g = Math.min(255, Math.max(0, (image[n] - lo) / width * 255));
      const o = 4 * (y * w + x), m = mask[n];
      if (m){ const col = COLOURS[m % COLOURS.length]; img.data[o] = 0.55*g + 0.45*col[0];
        img.data[o+1] = 0.55*g + 0.45*col[1]; img.data[o+2] = 0.55*g + 0.45*col[2]; }
      else { img.data[o] = img.data[o+1] = img.data[o+2] = g; }
      img.data[o+3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  });
}
function voxelAt(p, e){
  // from the canvas's box, not offsetX/clientWidth: both are rounded to whole CSS pixels, and a view centred at a
  // half pixel then sends the voxel beside the one under the cursor
  const pl = PLANES[p], c = $("c" + p), b = c.getBoundingClientRect();
  const x = Math.floor((e.clientX - b.left) * c.width / b.width), y = Math.floor((e.clientY - b.top) * c.height / b.height);
  const cx = Math.min(c.width - 1, Math.max(0, x)), cy = Math.min(c.height - 1, Math.max(0, y)), ijk = [...pos];
  ijk[pl.u] = pl.flipU ? c.width - 1 - cx : cx; ijk[pl.v] = pl.flipV ? c.height - 1 - cy : cy;
  return flat ? ijk.slice(0, 2) : ijk;
}
async function click(p, e, positive){
  e.preventDefault();
  if (!caseName || pending) return;
  const voxel = voxelAt(p, e);
  await task(async () => { try {
    const out = await api(`/api/cases/${caseName}/click`, {method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({voxel, label: +$("klass").value, positive})});
    await refreshMask();
    say(`${positive ? "+" : "-"} click at ${voxel.join(",")}: ${out.changed_voxels} voxels changed in ${out.seconds} s (${out.mode}); ${out.clicks} click(s)`);
  } catch (err) { say("click refused: " + err.message); } });
}
[0,1,2].forEach(p => {
  $("c" + p).addEventListener("mousedown", e => { if (e.button === 0) click(p, e, !e.shiftKey); else if (e.button === 2) click(p, e, false); });
  $("c" + p).addEventListener("contextmenu", e => e.preventDefault());
  $("s" + p).addEventListener("input", e => { pos[PLANES[p].fixed] = +e.target.value; draw(); });
});
$("level").addEventListener("change", draw); $("width").addEventListener("change", draw);
$("open").onclick = () => task(async () => { try { await show(await api("/api/open", {method: "POST",
  headers: {"Content-Type": "application/json"}, body: JSON.stringify({name: $("cases").value})})); }
  catch (err) { say("open failed: " + err.message); } });
$("upload").onclick = () => task(async () => { const f = $("file").files[0]; if (!f) return;
  try { await show(await api("/api/upload?name=" + encodeURIComponent(f.name), {method: "POST", body: f})); }
  catch (err) { say("upload refused: " + err.message); } });
$("undo").onclick = () => task(async () => { if (!caseName) return;
  try { const out = await api(`/api/cases/${caseName}/undo`, {method: "POST"});
    await refreshMask(); say(out.undone ? `undone; ${out.clicks} click(s)` : "nothing to undo"); }
  catch (err) { say("undo failed: " + err.message); } });
$("save").onclick = () => task(async () => { if (!caseName) return;
  try { const out = await api(`/api/cases/${caseName}/save`, {method: "POST"}); say("saved " + out.files.join(", ")); }
  catch (err) { say("save failed: " + err.message); } });
loadInfo().catch(err => say("server: " + err.message));
</script></body></html>
"""
