// medstream live view: draws each overlay on its own frame, shows its age and the pipeline's health.
// No build step, no dependencies. Protocol: runtime/web/encode.py (binary views) and server.py (JSON).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const frameCanvas = $("frame"), maskCanvas = $("mask"), vectorCanvas = $("vector"), stage = $("stage");
  const scratch = document.createElement("canvas");
  const AGES_KEPT = 20000;

  const state = {
    ws: null, connected: false, staleMs: 1000, statusStaleMs: 3000,
    offsetMs: 0, bestRttMs: Infinity, pongs: [],
    classes: [], classKey: "", hidden: new Set(),
    overlay: null, classIds: null, frameSeq: null, frameCaptureMs: null,
    health: null, healthRxMs: null, status: null,
    views: 0, decodeErrors: 0,
    agesAtDraw: [], publishAges: [], addedMs: [],
    staleReasons: ["no overlay received yet"],
  };

  const pageNow = () => performance.timeOrigin + performance.now();
  const serverNow = () => pageNow() + state.offsetMs;   // the server's wall clock, estimated
  const fmtMs = (v) => (v == null || !isFinite(v) ? "-" : v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms");
  const pct = (arr, p) => {
    if (!arr.length) return null;
    const s = Float64Array.from(arr).sort();
    return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
  };
  const push = (arr, v) => { arr.push(v); if (arr.length > AGES_KEPT) arr.shift(); };

  // ------------------------------------------------------------------------------------- socket
  function connect() {
    const token = new URLSearchParams(location.search).get("token");
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" +
      (token ? "?token=" + encodeURIComponent(token) : "");
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.onopen = () => { state.connected = true; setChip("conn", "connected", "ok"); schedulePings(); };
    ws.onclose = () => {
      state.connected = false;
      setChip("conn", "disconnected: retrying", "bad");
      setTimeout(connect, 1000);
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") onText(JSON.parse(ev.data));
      else onView(ev.data);
    };
  }

  let pingTimer = null, pingsSent = 0;
  function schedulePings() {
    clearTimeout(pingTimer);
    pingsSent = 0;
    const tick = () => {
      if (!state.connected) return;
      state.ws.send(JSON.stringify({ type: "ping", t0: pageNow() }));
      pingsSent += 1;
      pingTimer = setTimeout(tick, pingsSent < 8 ? 150 : 1000);
    };
    tick();
  }

  function onText(msg) {
    if (msg.type === "pong") {
      // NTP-style: the server read its clock between our send (t0) and our receive (t1).
      const t1 = pageNow(), rtt = t1 - msg.t0, offset = msg.server_ms - (msg.t0 + t1) / 2;
      state.pongs.push({ rtt, offset });
      if (state.pongs.length > 30) state.pongs.shift();
      const best = state.pongs.reduce((a, b) => (b.rtt < a.rtt ? b : a));
      state.offsetMs = best.offset; state.bestRttMs = best.rtt;
    } else if (msg.type === "hello") {
      state.staleMs = msg.stale_ms; state.statusStaleMs = msg.status_stale_ms;
    } else if (msg.type === "health") {
      state.health = msg; state.healthRxMs = pageNow(); state.status = msg.status;
      renderHealth();
    }
  }

  // --------------------------------------------------------------------------------------- views
  async function onView(buf) {
    const dv = new DataView(buf);
    const n = dv.getUint32(0, true);
    const head = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
    let at = 4 + n;
    try {
      let frameBitmap = null, maskBitmap = null;
      if (head.frame) {
        frameBitmap = await createImageBitmap(new Blob([new Uint8Array(buf, at, head.frame.bytes)], { type: head.frame.mime }));
        at += head.frame.bytes;
      }
      if (head.overlay) {
        maskBitmap = await createImageBitmap(new Blob([new Uint8Array(buf, at, head.overlay.mask.bytes)], { type: "image/png" }),
          { colorSpaceConversion: "none", premultiplyAlpha: "none" });
      }
      draw(head, frameBitmap, maskBitmap);   // synchronous: frame, mask and seq change together
    } catch (err) {
      state.decodeErrors += 1;
      console.error("view", head.seq, err);
    } finally {
      if (state.connected) state.ws.send(JSON.stringify({ type: "ack", seq: head.seq }));
    }
  }

  function draw(head, frameBitmap, maskBitmap) {
    const ov = head.overlay;
    const [fh, fw] = ov ? ov.frame_size : [head.frame.h, head.frame.w];
    if (frameCanvas.width !== fw || frameCanvas.height !== fh) { frameCanvas.width = fw; frameCanvas.height = fh; }
    stage.style.aspectRatio = fw + " / " + fh;
    const fctx = frameCanvas.getContext("2d");
    if (frameBitmap) { fctx.drawImage(frameBitmap, 0, 0, fw, fh); frameBitmap.close(); }
    else { fctx.fillStyle = "#000"; fctx.fillRect(0, 0, fw, fh); }
    state.frameSeq = head.seq; state.frameCaptureMs = head.t_capture_ms;
    state.overlay = ov;
    if (ov) {
      const { w, h } = ov.mask;
      scratch.width = w; scratch.height = h;
      const sctx = scratch.getContext("2d", { willReadFrequently: true });
      sctx.clearRect(0, 0, w, h);
      sctx.drawImage(maskBitmap, 0, 0);
      maskBitmap.close();
      const grey = sctx.getImageData(0, 0, w, h).data;
      const ids = new Uint8Array(w * h);
      for (let i = 0; i < ids.length; i++) ids[i] = grey[i * 4];
      state.classIds = ids;
      updateClasses(ov.classes, ov.task);
      const now = serverNow();
      push(state.agesAtDraw, now - ov.t_capture_ms);
      push(state.publishAges, ov.t_publish_ms - ov.t_capture_ms);
      push(state.addedMs, now - ov.t_publish_ms);
    } else {
      state.classIds = null;
    }
    state.views += 1;
    renderOverlay();
    renderInfo();
    checkStale();
  }

  function renderOverlay() {
    const ov = state.overlay;
    // the vector layer is drawn at screen resolution (crisp text), in frame coordinates
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round(vectorCanvas.clientWidth * dpr)), ch = Math.max(1, Math.round(vectorCanvas.clientHeight * dpr));
    if (vectorCanvas.width !== cw || vectorCanvas.height !== ch) { vectorCanvas.width = cw; vectorCanvas.height = ch; }
    const vctx = vectorCanvas.getContext("2d");
    vctx.setTransform(1, 0, 0, 1, 0, 0);
    vctx.clearRect(0, 0, cw, ch);
    if (!ov || !state.classIds) {
      maskCanvas.width = 1; maskCanvas.height = 1;   // no overlay: nothing drawn, never an old one
      return;
    }
    // mask: exact class colours, opaque; transparency comes from CSS (opacity slider), so the pixels
    // stay exact for getImageData (window.medstreamView.snapshotMask)
    const { w, h } = ov.mask;
    if (maskCanvas.width !== w || maskCanvas.height !== h) { maskCanvas.width = w; maskCanvas.height = h; }
    const mctx = maskCanvas.getContext("2d", { willReadFrequently: true });
    const img = mctx.createImageData(w, h);
    const lut = new Uint8Array(256 * 4);
    ov.classes.forEach((c, i) => {
      if (i === 0 || state.hidden.has(i)) return;
      lut.set([c.color[0], c.color[1], c.color[2], 255], i * 4);
    });
    const ids = state.classIds, px = img.data;
    for (let i = 0; i < ids.length; i++) {
      const k = ids[i] * 4;
      px[i * 4] = lut[k]; px[i * 4 + 1] = lut[k + 1]; px[i * 4 + 2] = lut[k + 2]; px[i * 4 + 3] = lut[k + 3];
    }
    mctx.putImageData(img, 0, 0);
    // line width and text size in canvas pixels that look the same at any display size
    const [fh, fw] = ov.frame_size;
    const sx = cw / fw, sy = ch / fh;
    vctx.setTransform(sx, 0, 0, sy, 0, 0);
    const lw = (1.5 * dpr) / sx;   // 1.5 screen pixels, in frame pixels
    const color = (i) => { const c = (ov.classes[i] || { color: [255, 255, 255] }).color; return `rgb(${c[0]},${c[1]},${c[2]})`; };
    vctx.setLineDash(ov.low_confidence ? [4 * lw, 3 * lw] : []);
    const labelAt = new Map();
    for (const [cls, pts] of ov.contours) {
      if (state.hidden.has(cls) || pts.length < 4) continue;
      if ($("show-contours").checked) {
        vctx.strokeStyle = color(cls); vctx.lineWidth = lw;
        vctx.beginPath();
        vctx.moveTo(pts[0], pts[1]);
        for (let i = 2; i < pts.length; i += 2) vctx.lineTo(pts[i], pts[i + 1]);
        vctx.closePath(); vctx.stroke();
      }
      let minx = Infinity, miny = Infinity;
      for (let i = 0; i < pts.length; i += 2) { minx = Math.min(minx, pts[i]); miny = Math.min(miny, pts[i + 1]); }
      const size = pts.length;
      if (!labelAt.has(cls) || labelAt.get(cls).size < size) labelAt.set(cls, { x: minx, y: miny, size });
    }
    if (!$("show-labels").checked) return;
    vctx.font = `${((13 * dpr) / sy).toFixed(2)}px system-ui, sans-serif`;
    vctx.textBaseline = "bottom";
    for (const [cls, at] of labelAt) {
      const name = (ov.classes[cls] || { name: "class " + cls }).name;
      const area = ov.areas_px && ov.areas_px[name];
      text(vctx, name + (area != null ? ` ${area} px` : ""), at.x, Math.max(12 * lw, at.y - 2), color(cls));
    }
    for (const box of normaliseBoxes(ov.boxes)) {
      if (box.classId != null && state.hidden.has(box.classId)) continue;
      const c = box.classId != null ? color(box.classId) : "rgb(255,255,0)";
      vctx.strokeStyle = c; vctx.lineWidth = 2 * lw;
      vctx.strokeRect(box.x0, box.y0, box.x1 - box.x0, box.y1 - box.y0);
      const name = box.label ?? (box.classId != null && ov.classes[box.classId] ? ov.classes[box.classId].name : "");
      const score = box.score != null ? ` ${(box.score * 100).toFixed(0)}%` : "";
      if (name || score) text(vctx, name + score, box.x0, Math.max(12 * lw, box.y0 - 2), c);
    }
  }

  // a classifier's label is a class id (docs/WIRE.md): shown by name with its probability
  function labelText(ov) {
    if (typeof ov.label === "string") return ov.label;
    if (Number.isInteger(ov.label) && ov.classes && ov.classes[ov.label]) {
      const p = Array.isArray(ov.probabilities) ? ov.probabilities[ov.label] : null;
      return ov.classes[ov.label].name + (Number.isFinite(p) ? ` (${(p * 100).toFixed(0)} %)` : "");
    }
    return JSON.stringify(ov.label);
  }

  function text(ctx, s, x, y, color) {
    const m = ctx.measureText(s);
    ctx.fillStyle = "rgba(0,0,0,0.6)";
    const size = parseFloat(ctx.font);
    ctx.fillRect(x - 1, y - size - 1, m.width + 2, size + 3);
    ctx.fillStyle = color; ctx.fillText(s, x, y);
  }

  // boxes as later tasks may send them: [{xyxy|xywh: [...], label?, class_id?, score?|confidence?}]
  // or plain arrays [x0, y0, x1, y1, class_id, score] as docs/WIRE.md defines them, all in frame pixels
  function normaliseBoxes(boxes) {
    if (!Array.isArray(boxes)) return [];
    const out = [];
    for (const b of boxes.slice(0, 512)) {
      let x0, y0, x1, y1, score = null, classId = null, label = null;
      if (Array.isArray(b) && b.length >= 4) {
        [x0, y0, x1, y1] = b; if (b.length > 4) classId = b[4]; if (b.length > 5) score = b[5];
      } else if (b && typeof b === "object") {
        if (Array.isArray(b.xyxy) && b.xyxy.length === 4) [x0, y0, x1, y1] = b.xyxy;
        else if (Array.isArray(b.xywh) && b.xywh.length === 4) { [x0, y0] = b.xywh; x1 = x0 + b.xywh[2]; y1 = y0 + b.xywh[3]; }
        else continue;
        score = b.score ?? b.confidence ?? null; classId = b.class_id ?? null; label = b.label ?? null;
      } else continue;
      if (![x0, y0, x1, y1].every(Number.isFinite)) continue;
      out.push({ x0, y0, x1, y1, score: Number.isFinite(score) ? score : null,
                 classId: Number.isInteger(classId) ? classId : null, label: typeof label === "string" ? label : null });
    }
    return out;
  }

  function updateClasses(classes, task) {
    const key = JSON.stringify([classes, task]);
    if (key === state.classKey) return;
    state.classKey = key; state.classes = classes;
    const box = $("classes");
    box.replaceChildren();
    classes.forEach((c, i) => {
      // class 0 is segmentation's background, never drawn; a detector's or classifier's class 0 is a real class
      if (i === 0 && (task == null || task === "segmentation")) return;
      const row = document.createElement("label"); row.className = "row";
      const cb = document.createElement("input"); cb.type = "checkbox"; cb.checked = !state.hidden.has(i);
      cb.dataset.classId = String(i); cb.id = "class-" + i;
      cb.addEventListener("change", () => { cb.checked ? state.hidden.delete(i) : state.hidden.add(i); renderOverlay(); });
      const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = `rgb(${c.color.join(",")})`;
      const name = document.createElement("span"); name.textContent = c.name; name.id = "class-name-" + i;
      row.append(cb, sw, name);
      box.append(row);
    });
  }

  // -------------------------------------------------------------------------------- side panel
  function setChip(id, textValue, cls) { const el = $(id); el.textContent = textValue; el.className = "chip " + (cls || ""); }

  function renderInfo() {
    const ov = state.overlay;
    $("seq").textContent = state.frameSeq == null ? "-" : String(state.frameSeq) + (ov ? "" : " (no overlay)");
    $("label").textContent = ov && ov.label != null ? labelText(ov) : "-";
    $("confidence").textContent = ov && Number.isFinite(ov.confidence) ? ov.confidence.toFixed(3) : "-";
    $("lowconf").hidden = !(ov && ov.low_confidence === true);
    if (ov) setChip("model", ov.model_id || "model ?");
  }

  function renderHealth() {
    const h = state.health, st = h.status;
    if (st) {
      setChip("backend", `${st.backend} on ${st.device}`);
      setChip("source-state", `source ${st.source_state}`, st.source_state === "live" ? "ok" : "bad");
      $("fps").textContent = `${st.fps_in.toFixed(1)} / ${st.fps_out.toFixed(1)}`;
      const lat = st.latency_ms && st.latency_ms.total;
      $("latency").textContent = lat ? `${fmtMs(lat.p50)} / ${fmtMs(lat.p99)}` : "-";
      const d = st.counters.dropped || {};
      const parts = Object.entries(d).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`);
      $("drops").textContent = `${st.counters.dropped_total} of ${st.counters.received}` + (parts.length ? ` (${parts.join(", ")})` : "");
      const err = $("source-error");
      err.hidden = !st.source_error; err.textContent = st.source_error ? "source error: " + st.source_error : "";
    }
    const c = h.client;
    $("web-drops").textContent = `${c.dropped_total} of ${c.offered}` +
      (c.dropped_total ? ` (${Object.entries(c.dropped).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(", ")})` : "");
    $("unpaired").textContent = String(h.web.overlay_without_frame);
    $("clock").textContent = `${state.offsetMs >= 0 ? "+" : ""}${state.offsetMs.toFixed(1)} ms (±${(state.bestRttMs / 2).toFixed(1)})`;
  }

  // -------------------------------------------------------------------------------------- stale
  function checkStale() {
    const reasons = [];
    const now = serverNow(), page = pageNow();
    if (!state.connected) reasons.push("no connection to the web view");
    else if (state.healthRxMs == null || page - state.healthRxMs > 2000) reasons.push("no news from the web view");
    const ov = state.overlay;
    if (!ov) {
      const newest = state.health && state.health.newest_overlay_capture_ms;
      reasons.push(newest == null ? "no overlay received yet" : `no overlay for this frame: newest is ${fmtMs(now - newest)} old`);
    } else if (now - ov.t_capture_ms > state.staleMs) {
      reasons.push(`overlay is ${fmtMs(now - ov.t_capture_ms)} old (limit ${fmtMs(state.staleMs)})`);
    }
    const st = state.status;
    if (!st) reasons.push("no status from medstream run");
    else {
      const age = now - st.t_capture_ns / 1e6;
      if (age > state.statusStaleMs) reasons.push(`runtime status is ${(age / 1000).toFixed(1)} s old: medstream run gone or hung`);
      if (st.state !== "running") reasons.push(`runtime ${st.state}`);
      if (st.source_state !== "live") reasons.push(`source ${st.source_state}`);
    }
    state.staleReasons = reasons;
    const stale = reasons.length > 0;
    stage.classList.toggle("stale", stale);
    const banner = $("stale");
    banner.hidden = !stale;
    banner.textContent = stale ? "STALE: " + reasons.join("; ") : "";
    $("age").textContent = ov ? fmtMs(now - ov.t_capture_ms) : "-";
    const p50 = pct(state.agesAtDraw, 50), p99 = pct(state.agesAtDraw, 99);
    $("page-age").textContent = `${fmtMs(p50)} / ${fmtMs(p99)}`;
  }

  // ----------------------------------------------------------------------------------- controls
  $("opacity").addEventListener("input", (e) => document.documentElement.style.setProperty("--mask-opacity", e.target.value));
  $("show-contours").addEventListener("change", renderOverlay);
  $("show-labels").addEventListener("change", renderOverlay);
  window.addEventListener("resize", renderOverlay);

  // -------------------------------------------------------------- for tests and benchmarks
  window.medstreamView = {
    get seq() { return state.overlay ? state.overlay.seq : null; },
    get frameSeq() { return state.frameSeq; },
    get stale() { return state.staleReasons.length > 0; },
    get staleReasons() { return state.staleReasons.slice(); },
    overlayHeader() { return state.overlay; },
    // the mask canvas exactly as drawn, with the seq and capture time it belongs to
    snapshotMask() {
      if (!state.overlay) return null;
      const { width: w, height: h } = maskCanvas;
      const data = maskCanvas.getContext("2d", { willReadFrequently: true }).getImageData(0, 0, w, h).data;
      let bin = "";
      for (let i = 0; i < data.length; i += 0x8000) bin += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
      return { seq: state.overlay.seq, t_capture_ns: state.overlay.t_capture_ns, w, h, rgba_b64: btoa(bin) };
    },
    stats() {
      return { views: state.views, decode_errors: state.decodeErrors, offset_ms: state.offsetMs, best_rtt_ms: state.bestRttMs,
               ages_at_draw_ms: state.agesAtDraw.slice(), publish_ages_ms: state.publishAges.slice(),
               added_ms: state.addedMs.slice(), client: state.health ? state.health.client : null,
               web: state.health ? state.health.web : null };
    },
    resetStats() { state.agesAtDraw.length = 0; state.publishAges.length = 0; state.addedMs.length = 0; },
  };

  setInterval(checkStale, 100);
  connect();
})();
