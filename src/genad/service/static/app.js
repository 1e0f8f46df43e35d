// genad inspection page: plain JS, no build step. Text from the server (file names,
// explanations) is always set with textContent, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
let current = [];   // inspections shown in the viewer (one per uploaded file)
let shown = 0;      // which of them is on the stage

function el(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const c of children) e.append(c);
  return e;
}

// -- the service's token (genad serve --token): asked once, kept in this tab only ------------
// It comes from the login form or from the URL fragment (http://host:8000/#token=...), which
// browsers never send to the server; the fragment is removed from the address bar at once.
const TOKEN_KEY = "genad-token";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
(function tokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return;
  token = decodeURIComponent(m[1]);
  sessionStorage.setItem(TOKEN_KEY, token);
  history.replaceState(null, "", location.pathname + location.search);
})();

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function needToken(message) {
  $("login").hidden = false;
  $("logout").hidden = true;
  setStatus(message, true);
  $("token").focus();
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), ...authHeaders() } });
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (r.status === 401) needToken((body && body.detail) || "this service needs a token");
  if (!r.ok) throw new Error((body && body.detail) || `${r.status} ${r.statusText}`);
  return body;
}

// Pictures come from /v1 too: without a token an <img> loads them itself; with one they are
// fetched with the header and shown as blob URLs (an <img> cannot send a header).
const blobs = new Map();  // element -> its blob URL, revoked when replaced
async function setSrc(img, url) {
  if (!token) { img.src = url; return; }
  const r = await fetch(url, { headers: authHeaders() });
  if (r.status === 401) { needToken("this service needs a token"); return; }
  if (!r.ok) return;
  const obj = URL.createObjectURL(await r.blob());
  if (blobs.has(img)) URL.revokeObjectURL(blobs.get(img));
  blobs.set(img, obj);
  img.src = obj;
}

async function openPicture(ev) {
  if (!token) return;  // a plain link works without a token
  ev.preventDefault();
  const r = await fetch(ev.currentTarget.href, { headers: authHeaders() });
  if (r.ok) window.open(URL.createObjectURL(await r.blob()), "_blank");
}

function useToken(ev) {
  ev.preventDefault();
  token = $("token").value.trim();
  $("token").value = "";
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  $("login").hidden = true;
  $("logout").hidden = !token;
  setStatus("");
  loadAll();
}

function forgetToken() {
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
}

function loadAll() {
  loadDetectors().catch((e) => { if ($("login").hidden) setStatus(`cannot reach the service: ${e.message}`, true); });
  loadHistory().catch(() => {});
  loadModels().catch(() => {});
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "err" : "";
}

async function loadDetectors() {
  const d = await api("/v1/detectors");
  const sel = $("detector");
  const chosen = sel.value || d.default;
  // image_detectors is null while the service is still importing detectors at start-up:
  // offer every name meanwhile and ask again shortly.
  const names = d.image_detectors || d.detectors;
  if (!d.image_detectors) setTimeout(() => loadDetectors().catch(() => {}), 1500);
  sel.replaceChildren();
  for (const name of names) {
    const o = el("option", { value: name, textContent: name === d.default ? `${name} (default)` : name });
    if (name === chosen) o.selected = true;
    sel.append(o);
  }
  const lmm = $("lmm");
  if (d.lmm.configured) {
    lmm.textContent = `LMM: ${d.lmm.model} @ ${d.lmm.host}`;
    lmm.classList.add("on");
  } else {
    lmm.textContent = "LMM: not configured";
    lmm.title = `set ${d.lmm.missing.join(", ")} to use the lmm detectors`;
  }
  const L = d.limits;
  $("limits").textContent = `Up to ${L.max_files} files, ${L.max_upload_mb} MB each. PNG, JPEG, BMP, TIFF, WebP.`;
}

let models = [];   // stored models, from /v1/models

async function loadModels(select) {
  const d = await api("/v1/models?limit=500");
  models = d.models;
  const sel = $("model");
  const chosen = select === undefined ? sel.value : select;
  sel.replaceChildren(el("option", { value: "", textContent: "none: use the references below" }));
  for (const m of models) {
    const o = el("option", { value: m.id, textContent: `${m.name} (${m.detector}, ${m.n_references} references)` });
    if (m.id === chosen) o.selected = true;
    sel.append(o);
  }
  modelChanged();
}

function modelChanged() {
  // A stored model brings its own references, detector and options: hide ours.
  const m = models.find((x) => x.id === $("model").value);
  $("fit-here").hidden = !!m;
  $("model-hint").textContent = m
    ? `fitted once on ${m.n_references} references, ${new Date(m.created * 1000).toLocaleString()}; no refit`
    : "";
}

async function keepModel() {
  const name = $("model-name").value.trim();
  const refs = $("normals").files;
  if (!refs.length) { setStatus("choose normal references to fit the model on", true); return; }
  if (!name) { setStatus("give the model a name", true); return; }
  const fd = new FormData();
  fd.append("name", name);
  for (const f of refs) fd.append("normals", f, f.name);
  fd.append("detector", $("detector").value);
  fd.append("params", $("params").value.trim() || "{}");
  $("keep-run").disabled = $("run").disabled = true;
  setStatus(`fitting ${$("detector").value} on ${refs.length} reference(s)…`);
  try {
    const m = await api("/v1/models", { method: "POST", body: fd });
    await loadModels(m.id);
    setStatus(`kept model ${m.name}: ${m.n_references} references, ${(m.size_bytes / 1024).toFixed(0)} kB`);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("keep-run").disabled = $("run").disabled = false;
  }
}

async function loadHistory() {
  const d = await api("/v1/inspections?limit=30");
  const ul = $("history");
  ul.replaceChildren();
  for (const ins of d.inspections) {
    const dot = el("span", { className: "dot " + (ins.decision === true ? "bad" : ins.decision === false ? "good" : "") });
    const thumb = el("img", { loading: "lazy", alt: "" });
    setSrc(thumb, ins.thumb_url).catch(() => {});
    const li = el("li", { title: new Date(ins.created * 1000).toLocaleString() }, [
      thumb,
      el("div", {}, [
        el("div", { className: "name", textContent: ins.filename || ins.id.slice(0, 8) }),
        el("div", {
          className: "sub",
          textContent: `${ins.model ? `model ${ins.model.name}` : ins.detector} · ${ins.error ? "error" : fmt(ins.score)}`,
        }),
      ]),
      dot,
    ]);
    li.addEventListener("click", () => { current = [ins]; show(0); });
    ul.append(li);
  }
}

function show(i) {
  const ins = current[i];
  shown = i;
  $("empty").hidden = true;
  $("result").hidden = false;
  const thumbs = $("thumbs");
  thumbs.replaceChildren();
  if (current.length > 1) {
    current.forEach((c, j) => {
      const t = el("img", { className: j === i ? "sel" : "", title: c.filename || "" });
      setSrc(t, c.thumb_url).catch(() => {});
      t.addEventListener("click", () => show(j));
      thumbs.append(t);
    });
  }
  setSrc($("image"), ins.image_url).catch(() => {});
  fitStage();
  const hm = $("heatmap");
  if (ins.heatmap_url) { setSrc(hm, ins.heatmap_url).catch(() => {}); hm.hidden = false; } else { hm.removeAttribute("src"); hm.hidden = true; }
  // the legend's middle mark is the threshold only when the detector gave one
  $("legend").hidden = !ins.heatmap_url || ins.result.threshold === null || ins.result.threshold === undefined;
  const link = $("overlay-link");
  link.hidden = !ins.overlay_url;
  if (ins.overlay_url) link.href = ins.overlay_url;

  const r = ins.result || {};
  $("normalized").textContent = fmt(r.normalized_score);
  $("score").textContent = fmt(r.score);
  $("threshold").textContent = fmt(r.threshold);
  const badge = $("decision");
  badge.textContent = r.decision === true ? "ANOMALOUS" : r.decision === false ? "normal" : "no decision";
  badge.className = "badge " + (r.decision === true ? "bad" : r.decision === false ? "good" : "");
  $("error").hidden = !r.error;
  $("error").textContent = r.error || "";

  const boxes = $("boxes");
  boxes.replaceChildren();
  const ol = $("regions");
  ol.replaceChildren();
  const regions = r.regions || [];
  regions.forEach((g, k) => {
    const n = g.index ?? k + 1;
    const text = `region ${n}: score ${fmt(g.score)}` + (g.label ? ` · ${g.label}` : "") + (g.explanation ? ` · ${g.explanation}` : "");
    ol.append(el("li", { value: n, textContent: text }));
    if (g.box && ins.width && ins.height) {
      const [x0, y0, x1, y1] = g.box;
      const b = el("div", { className: "box" }, [el("span", { textContent: String(n) })]);
      Object.assign(b.style, {
        left: `${(100 * x0) / ins.width}%`, top: `${(100 * y0) / ins.height}%`,
        width: `${(100 * (x1 - x0)) / ins.width}%`, height: `${(100 * (y1 - y0)) / ins.height}%`,
      });
      boxes.append(b);
    }
  });
  if (!regions.length) ol.append(el("li", { textContent: "none", style: "list-style:none" }));
  $("explanation").textContent = r.explanation || "(this detector gives no text explanation; the lmm detectors do)";
  $("meta").textContent = JSON.stringify(
    { detector: ins.detector, model: ins.model, params: ins.params, normals: ins.n_normals, size: `${ins.width}x${ins.height}`,
      timings: r.timings, usage: r.usage, id: ins.id }, null, 2);
  applyOpacity();
}

function fitStage() {
  // Scale the picture to the viewer (up or down); the heatmap layer and the region boxes
  // follow because they are sized in percent of the stage.
  const ins = current[shown];
  if (!ins || !ins.width) return;
  const maxW = $("stage").parentElement.clientWidth - 8;
  const maxH = Math.min(560, Math.max(240, window.innerHeight * 0.62));
  const s = Math.min(maxW / ins.width, maxH / ins.height);
  $("image").style.width = `${Math.round(ins.width * s)}px`;
  $("image").style.height = `${Math.round(ins.height * s)}px`;
}

function applyOpacity() {
  const v = $("opacity").value;
  $("heatmap").style.opacity = v / 100;
  $("opacity-out").textContent = `${v}%`;
  $("boxes").hidden = !$("show-boxes").checked;
}

async function submit(ev) {
  ev.preventDefault();
  const files = $("files").files;
  if (!files.length) { setStatus("choose a test image first", true); return; }
  const fd = new FormData();
  for (const f of files) fd.append("files", f, f.name);
  const model = $("model").value;
  if (model) {
    fd.append("model", model);  // the stored model's own references, detector and options
  } else {
    for (const f of $("normals").files) fd.append("normals", f, f.name);
    fd.append("detector", $("detector").value);
    fd.append("params", $("params").value.trim() || "{}");
  }
  fd.append("inline_png", "false");  // the page loads the PNGs by URL
  $("run").disabled = true;
  const t0 = performance.now();
  setStatus(`inspecting ${files.length} image(s)…`);
  try {
    const d = await api("/v1/detect", { method: "POST", body: fd });
    current = d.inspections;
    show(0);
    setStatus(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    loadHistory();
  } catch (e) {
    setStatus(e.message, true);
    if (model) loadModels().catch(() => {});  // it may have been deleted meanwhile
  } finally {
    $("run").disabled = false;
  }
}

function wireDrop(zoneId, inputId, hintId) {
  const zone = $(zoneId), input = $(inputId), hint = $(hintId), original = hint.textContent;
  const update = () => {
    const n = input.files.length;
    hint.textContent = n ? Array.from(input.files, (f) => f.name).join(", ") : original;
  };
  input.addEventListener("change", update);
  for (const t of ["dragenter", "dragover"]) zone.addEventListener(t, () => zone.classList.add("over"));
  for (const t of ["dragleave", "drop"]) zone.addEventListener(t, () => zone.classList.remove("over"));
}

document.addEventListener("DOMContentLoaded", () => {
  wireDrop("drop-files", "files", "files-hint");
  wireDrop("drop-normals", "normals", "normals-hint");
  $("form").addEventListener("submit", submit);
  $("model").addEventListener("change", modelChanged);
  $("keep-run").addEventListener("click", keepModel);
  $("opacity").addEventListener("input", applyOpacity);
  $("show-boxes").addEventListener("change", applyOpacity);
  $("overlay-link").addEventListener("click", openPicture);
  $("login").addEventListener("submit", useToken);
  $("logout").addEventListener("click", forgetToken);
  $("logout").hidden = !token;
  window.addEventListener("resize", fitStage);
  loadAll();
});
