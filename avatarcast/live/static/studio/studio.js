// avatarcast studio: avatars, sessions, a live preview (WHEP), speak by typing (server TTS), speak with the
// microphone (AudioWorklet -> the session's ingest WebSocket, utterances cut by voice activity), direction and live
// figures. Plain JavaScript, no build step; every request goes to this server. The admin token comes from the page
// URL (?token=...) and is sent as a Bearer header; the ingest WebSocket and the WHEP preview use the session's own
// ingest and viewer tokens.
(() => {
  "use strict";
  const params = new URLSearchParams(location.search);
  const adminToken = params.get("token") || "";
  const $ = (id) => document.getElementById(id);
  const state = window.studio = {
    avatars: [], sessions: [], details: {}, selected: null, framesDecoded: 0, connected: false,
    micOn: false, micOnsets: [], viewerOnsets: [], viewerLevel: 0, vad: "off", lastError: "", latencies: [],
    instructions: 0, says: 0, latencyLags: [], playbackStarted: [],
  };

  // ------------------------------------------------------------------------------------------ API

  async function api(method, path, body, contentType) {
    const headers = { Authorization: `Bearer ${adminToken}` };
    let payload = body;
    if (body !== undefined && contentType === undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    } else if (contentType) {
      headers["Content-Type"] = contentType;
    }
    const res = await fetch(path, { method, headers, body: payload });
    const type = res.headers.get("Content-Type") || "";
    const data = type.includes("json") ? await res.json() : await res.blob();
    if (!res.ok) {
      const msg = data && data.error ? data.error.message : `HTTP ${res.status}`;
      throw new Error(msg);
    }
    return data;
  }

  function setStatus(text) { $("status").textContent = text; }
  function showError(id, err) {
    const text = err ? (err.message || String(err)) : "";
    $(id).textContent = text;
    if (text) state.lastError = text;
  }

  // ------------------------------------------------------------------------------------------ avatars

  const previewUrls = {};

  async function refreshAvatars() {
    const data = await api("GET", "/studio/api/avatars");
    state.avatars = data.avatars;
    const list = $("avatar-list");
    const keep = new Set();
    for (const a of data.avatars) {
      keep.add(a.id);
      let li = list.querySelector(`li[data-id="${a.id}"]`);
      if (!li) {
        li = document.createElement("li");
        li.dataset.id = a.id;
        list.appendChild(li);
      }
      li.className = a.status;
      if (li.dataset.version === `${a.status}|${a.stage}|${a.progress}`) continue;
      li.dataset.version = `${a.status}|${a.stage}|${a.progress}`;
      li.replaceChildren();
      if (a.preview) {
        const img = document.createElement("img");
        img.alt = a.status === "failed" ? `${a.name}: the faces found, numbered for 'Face'` : `${a.name}: the detected face`;
        li.appendChild(img);
        loadPreview(a.preview, img);
      }
      if (a.frame) {
        const img = document.createElement("img");
        img.alt = `${a.name}: its first frame as a session shows it`;
        img.className = "frame";
        li.appendChild(img);
        loadPreview(a.frame, img);
      }
      const title = document.createElement("strong");
      title.textContent = a.name;
      li.appendChild(title);
      const line = document.createElement("div");
      line.className = "stage";
      if (a.status === "ready") {
        const d = a.details || {};
        line.textContent = a.id === "default" ? "ready (bundled)" :
          `ready: ${a.kind}${d.width ? `, ${d.width}x${d.height}` : ""}${d.prepare_s ? `, prepared in ${d.prepare_s} s` : ""}`;
      } else if (a.status === "failed") {
        line.textContent = "refused";
      } else {
        line.textContent = `${a.stage}...`;
        const bar = document.createElement("progress");
        bar.max = 1; bar.value = a.progress;
        bar.setAttribute("aria-label", `preparing ${a.name}`);
        li.appendChild(bar);
      }
      li.appendChild(line);
      if (a.details && a.details.warning) {
        const warn = document.createElement("p");
        warn.className = "warn";
        warn.textContent = a.details.warning;
        li.appendChild(warn);
      }
      if (a.error) {
        const err = document.createElement("p");
        err.className = "err";
        err.setAttribute("role", "alert");
        err.textContent = a.error;
        li.appendChild(err);
      }
      if (a.id !== "default") {
        const del = document.createElement("button");
        del.type = "button";
        del.textContent = "Delete";
        del.setAttribute("aria-label", `delete avatar ${a.name}`);
        del.onclick = async () => { await api("DELETE", `/studio/api/avatars/${a.id}`).catch(() => {}); refreshAvatars(); };
        li.appendChild(del);
      }
    }
    for (const li of [...list.children]) if (!keep.has(li.dataset.id)) li.remove();
    const select = $("session-avatar");
    const current = select.value;
    select.replaceChildren();
    for (const a of data.avatars.filter((x) => x.status === "ready")) {
      const opt = document.createElement("option");
      opt.value = a.id; opt.textContent = a.name;
      select.appendChild(opt);
    }
    const want = select.dataset.want;
    if (want && [...select.options].some((o) => o.value === want)) { select.value = want; delete select.dataset.want; }
    else if ([...select.options].some((o) => o.value === current)) select.value = current;
    if (data.avatars.some((a) => a.status === "queued" || a.status === "preparing")) setTimeout(refreshAvatars, 400);
  }

  async function loadPreview(path, img) {
    try {
      if (!previewUrls[path]) previewUrls[path] = URL.createObjectURL(await api("GET", path));
      img.src = previewUrls[path];
    } catch (e) { /* not there yet */ }
  }

  $("upload-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("upload-error", null);
    const file = $("upload-file").files[0];
    if (!file) return;
    const kind = $("upload-kind").value;
    const q = new URLSearchParams({ kind, name: file.name });
    if ($("upload-face").value !== "") q.set("face", $("upload-face").value);
    $("upload-button").disabled = true;
    try {
      const entry = await api("POST", `/studio/api/avatars?${q}`, file, file.type || "application/octet-stream");
      setStatus(`uploaded ${file.name}: preparing`);
      $("session-avatar").dataset.want = entry.id;
      await refreshAvatars();
    } catch (err) {
      showError("upload-error", err);
    } finally {
      $("upload-button").disabled = false;
    }
  });

  // ------------------------------------------------------------------------------------------ sessions

  async function refreshSessions() {
    const data = await api("GET", "/v1/sessions");
    state.sessions = data.sessions;
    const key = data.sessions.map((s) => s.id).join(",");
    const rows = $("session-rows");
    if (rows.dataset.key === key && rows.children.length === data.sessions.length) return;
    rows.dataset.key = key;
    rows.replaceChildren();
    for (const s of data.sessions) {
      if (!state.details[s.id]) state.details[s.id] = await api("GET", `/v1/sessions/${encodeURIComponent(s.id)}`);
      const d = state.details[s.id];
      const tr = document.createElement("tr");
      tr.dataset.id = s.id;
      if (state.selected === s.id) tr.className = "selected";
      const cell = (content) => { const td = document.createElement("td"); td.append(content); tr.appendChild(td); return td; };
      cell(`${s.id} (${s.avatar.split("/").pop()})`);
      cell(`${s.size} @ ${s.fps} fps`);
      const url = document.createElement("input");
      url.className = "url"; url.readOnly = true; url.value = d.urls.view;
      url.setAttribute("aria-label", `OBS Browser Source URL of session ${s.id}`);
      const copy = document.createElement("button");
      copy.type = "button"; copy.textContent = "Copy";
      copy.setAttribute("aria-label", `copy the OBS URL of session ${s.id}`);
      copy.onclick = () => copyText(url, copy);
      const urlCell = cell(url); urlCell.append(" ", copy);
      const link = document.createElement("a");
      link.href = d.urls.view + (d.urls.view.includes("?") ? "&" : "?") + "stats=1";
      link.target = "_blank"; link.rel = "noopener"; link.textContent = "open viewer";
      cell(link);
      const actions = document.createElement("span");
      const pick = document.createElement("button");
      pick.type = "button"; pick.className = "pick"; pick.textContent = state.selected === s.id ? "Selected" : "Select";
      pick.setAttribute("aria-label", `select session ${s.id} for preview and control`);
      pick.onclick = () => select(s.id);
      const end = document.createElement("button");
      end.type = "button"; end.textContent = "End"; end.className = "danger";
      end.setAttribute("aria-label", `end session ${s.id}`);
      end.onclick = () => endSession(s.id);
      actions.append(pick, " ", end);
      cell(actions);
      rows.appendChild(tr);
    }
    if (state.selected && !data.sessions.some((s) => s.id === state.selected)) select(null);
  }

  function copyText(input, button) {
    const done = () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, () => { input.select(); document.execCommand("copy"); done(); });
    } else {
      input.select(); document.execCommand("copy"); done();
    }
  }

  $("session-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    showError("session-error", null);
    $("session-create").disabled = true;
    setStatus("creating a session...");
    try {
      const info = await api("POST", "/studio/api/sessions", {
        avatar: $("session-avatar").value || "default", size: $("session-size").value,
        fps: Number($("session-fps").value) });
      state.details[info.id] = info;
      setStatus(`session ${info.id} created`);
      await refreshSessions();
      await select(info.id);
    } catch (err) {
      showError("session-error", err);
      setStatus("");
    } finally {
      $("session-create").disabled = false;
    }
  });

  async function endSession(id) {
    if (state.selected === id) await select(null);
    try { await api("DELETE", `/v1/sessions/${encodeURIComponent(id)}`); } catch (err) { showError("session-error", err); }
    delete state.details[id];
    await refreshSessions();
  }

  async function select(id) {
    stopMic();
    await closePreview();
    state.selected = id;
    resetPlots();
    $("live-session").textContent = id ? `session ${id}` : "no session selected";
    for (const tr of $("session-rows").children) {
      tr.className = tr.dataset.id === id ? "selected" : "";
      const b = tr.querySelector("button.pick");
      if (b) b.textContent = tr.dataset.id === id ? "Selected" : "Select";
    }
    if (id) await openPreview(id).catch((e) => { $("preview-state").textContent = `preview failed: ${e.message}`; });
  }

  // ------------------------------------------------------------------------------------------ preview (WHEP)

  let pc = null, whepResource = null, whepQuery = "", levelTimer = null, audioCtxView = null;
  const video = $("preview");

  async function openPreview(id) {
    const d = state.details[id];
    whepQuery = `?token=${encodeURIComponent(d.viewer_token)}`;
    $("preview-state").textContent = "connecting...";
    pc = new RTCPeerConnection({ iceServers: [] });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    const stream = new MediaStream();
    pc.ontrack = (ev) => {
      stream.addTrack(ev.track);
      video.srcObject = stream;
      video.play().catch(() => { video.muted = true; video.play().catch(() => {}); });
      if (ev.track.kind === "audio") listenToViewerAudio(ev.track);
    };
    pc.onconnectionstatechange = () => {
      state.connected = pc && pc.connectionState === "connected";
      $("preview-state").textContent = pc ? pc.connectionState : "";
    };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => { if (pc.iceGatheringState === "complete") resolve(); });
      setTimeout(resolve, 2000);
    });
    const res = await fetch(`/v1/sessions/${encodeURIComponent(id)}/whep${whepQuery}`, {
      method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp });
    if (res.status !== 201) throw new Error(await res.text());
    whepResource = res.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  }

  async function closePreview() {
    if (levelTimer) { clearTimeout(levelTimer); levelTimer = null; }
    if (audioCtxView) { audioCtxView.close().catch(() => {}); audioCtxView = null; }
    if (pc) { pc.close(); pc = null; }
    if (whepResource) { fetch(whepResource + whepQuery, { method: "DELETE" }).catch(() => {}); whepResource = null; }
    video.srcObject = null;
    state.connected = false;
    state.framesDecoded = 0;
  }

  // The level of the audio the viewer receives, every 5 ms; a rise after a quiet stretch is an onset (for the
  // mic-to-viewer latency).
  function listenToViewerAudio(track) {
    audioCtxView = new AudioContext();
    const analyser = audioCtxView.createAnalyser();
    analyser.fftSize = 256;
    audioCtxView.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    audioCtxView.resume().catch(() => {});
    const ctxView = audioCtxView, wall0 = performance.now(), ctx0 = ctxView.currentTime;
    // how far the received audio's clock has fallen behind the page's (a starved audio output delays what the
    // level meter hears, and would be counted as latency)
    state.viewerClockLagMs = () => (performance.now() - wall0) - (ctxView.currentTime - ctx0) * 1000;
    const buf = new Float32Array(analyser.fftSize);
    let quietSince = performance.now();
    const tick = () => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
      const rms = Math.sqrt(sum / buf.length);
      state.viewerLevel = rms;
      const now = performance.now();
      if (rms < 0.004) {
        if (quietSince === null) quietSince = now;
      } else if (rms > 0.02 && quietSince !== null) {
        if (now - quietSince > 300) state.viewerOnsets.push(now);
        quietSince = null;
      }
      // every 5 ms while the latency is measured, else every 25 ms (fewer wake-ups for the page)
      levelTimer = setTimeout(tick, state.measuring ? 5 : 25);
    };
    tick();
  }

  $("preview-mute").addEventListener("click", () => {
    video.muted = !video.muted;
    $("preview-mute").setAttribute("aria-pressed", String(video.muted));
    $("preview-mute").textContent = video.muted ? "Unmute preview" : "Mute preview";
  });

  // ------------------------------------------------------------------------------------------ speak by typing

  async function loadVoices() {
    const data = await api("GET", "/studio/api/voices");
    const sel = $("say-voice");
    sel.replaceChildren();
    for (const v of data.voices) {
      const opt = document.createElement("option");
      opt.value = v.id; opt.textContent = v.label;
      sel.appendChild(opt);
    }
    if (!data.voices.length) $("say-result").textContent = "no local TTS engine installed (apt install espeak-ng)";
  }

  async function say() {
    const text = $("say-text").value.trim();
    if (!state.selected) { $("say-result").textContent = "select a session first"; return; }
    if (!text) { $("say-result").textContent = "type something to say"; return; }
    $("say-button").disabled = true;
    try {
      const r = await api("POST", `/studio/api/sessions/${encodeURIComponent(state.selected)}/say`,
        { text, voice: $("say-voice").value || null });
      state.says++;
      $("say-result").textContent = `speaking: ${(r.duration_ms / 1000).toFixed(1)} s, ${r.words.length} words timed ` +
        `(TTS ${Math.round(r.tts_ms)} ms)`;
    } catch (err) {
      $("say-result").textContent = err.message;
      state.lastError = err.message;
    } finally {
      $("say-button").disabled = false;
    }
  }
  $("say-button").addEventListener("click", say);
  $("say-text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); say(); } });

  // ------------------------------------------------------------------------------------------ microphone

  const RATES = [16000, 22050, 24000, 48000];
  const VAD = { minRms: 0.012, floorFactor: 3.0, onsetBlocks: 2, hangBlocks: 25, prerollBlocks: 10, maxBlocks: 1000 };
  let mic = null;

  async function startMic() {
    if (!state.selected) { $("mic-state").textContent = "select a session first"; return; }
    const d = state.details[state.selected];
    if (!navigator.mediaDevices || !window.AudioWorkletNode) {
      throw new Error("this page cannot use a microphone here: browsers allow it only over HTTPS or on localhost");
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 } });
    // the context runs at the device's rate unless told otherwise (window.studio.micRate, e.g. 44100 to try the
    // resampling that a 44.1 kHz sound card needs)
    const ctx = state.micRate ? new AudioContext({ sampleRate: state.micRate }) : new AudioContext();
    await ctx.audioWorklet.addModule("/static/studio/mic-worklet.js");
    const src = ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(ctx, "mic-capture", { numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1 });
    const sink = ctx.createGain();
    sink.gain.value = 0;
    src.connect(node); node.connect(sink); sink.connect(ctx.destination);
    const rate = RATES.includes(ctx.sampleRate) ? ctx.sampleRate : 48000;
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/v1/sessions/${encodeURIComponent(state.selected)}/ingest` +
      `?token=${encodeURIComponent(d.ingest_token)}`);
    ws.binaryType = "arraybuffer";
    mic = { stream, ctx, node, ws, rate, ratio: ctx.sampleRate / rate, carry: 0,
            floor: 0.003, voiced: 0, silent: 0, speaking: false, blocks: 0, preroll: [] };
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") return;
      const ev = JSON.parse(e.data);
      if (ev.type === "error") $("mic-state").textContent = `server: ${ev.message}`;
      if (ev.type === "playback.started") state.playbackStarted.push(performance.now());
    };
    ws.onclose = (e) => {
      if (!mic || mic.ws !== ws) return;
      stopMic();
      if (e.code === 4001) $("mic-state").textContent = "off: another ingest client took over this session";
      else if (e.code !== 1000) $("mic-state").textContent = `off: the ingest connection closed (${e.code})`;
    };
    node.port.onmessage = (e) => onBlock(e.data);
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("ingest refused")); });
    state.micOn = true;
    state.vad = "listening";
    $("mic-button").textContent = "Stop microphone";
    $("mic-button").setAttribute("aria-pressed", "true");
    $("mic-state").dataset.rate = `${ctx.sampleRate} Hz${rate !== ctx.sampleRate ? ` -> ${rate} Hz` : ""}`;
    $("mic-state").textContent = `listening (${$("mic-state").dataset.rate})`;
  }

  function stopMic() {
    if (!mic) return;
    const m = mic;
    mic = null;
    if (m.speaking && m.ws.readyState === WebSocket.OPEN) m.ws.send(JSON.stringify({ type: "speech.end" }));
    m.ws.close(1000);
    m.stream.getTracks().forEach((t) => t.stop());
    m.ctx.close().catch(() => {});
    state.micOn = false;
    state.vad = "off";
    $("mic-button").textContent = "Start microphone";
    $("mic-button").setAttribute("aria-pressed", "false");
    $("mic-state").textContent = "off";
    $("mic-level").value = 0;
  }

  // linear resampling to the declared rate (only when the context runs at a rate the protocol does not take)
  function toRate(m, block) {
    if (m.ratio === 1) return block;
    const out = [];
    let pos = m.carry;
    while (pos < block.length) {
      const i = Math.floor(pos), f = pos - i;
      const a = block[i], b = i + 1 < block.length ? block[i + 1] : block[i];
      out.push(a + (b - a) * f);
      pos += m.ratio;
    }
    m.carry = pos - block.length;
    return Float32Array.from(out);
  }

  function pcm16(block) {
    const out = new Int16Array(block.length);
    for (let i = 0; i < block.length; i++) out[i] = Math.max(-32768, Math.min(32767, Math.round(block[i] * 32767)));
    return out.buffer;
  }

  // One 20 ms block: voice activity by level against a running noise floor. An utterance starts ("start" and the
  // 200 ms before the onset) after two loud blocks and ends ("speech.end") after 500 ms below the threshold.
  function onBlock(block) {
    const m = mic;
    if (!m || m.ws.readyState !== WebSocket.OPEN) return;
    const arrived = performance.now();
    let sum = 0, first = -1;
    const threshold = Math.max(VAD.minRms, m.floor * VAD.floorFactor);
    for (let i = 0; i < block.length; i++) {
      sum += block[i] * block[i];
      if (first < 0 && Math.abs(block[i]) > threshold * 1.5) first = i;
    }
    const rms = Math.sqrt(sum / block.length);
    $("mic-level").value = Math.min(1, rms * 5);
    const loud = rms > threshold;
    if (!loud) m.floor = rms < m.floor ? 0.9 * m.floor + 0.1 * rms : Math.min(0.05, m.floor * 1.01 + 1e-6);
    const data = pcm16(toRate(m, block));
    if (!m.speaking) {
      m.preroll.push({ data, arrived, first, loud, n: block.length });
      if (m.preroll.length > VAD.prerollBlocks) m.preroll.shift();
      m.voiced = loud ? m.voiced + 1 : 0;
      if (m.voiced >= VAD.onsetBlocks) {
        // the onset: the first loud sample of the first loud block, on the page's clock
        const onsetBlock = m.preroll[m.preroll.length - VAD.onsetBlocks];
        const sr = m.ctx.sampleRate;
        const firstIdx = onsetBlock.first >= 0 ? onsetBlock.first : 0;
        state.micOnsets.push(onsetBlock.arrived - ((onsetBlock.n - firstIdx) / sr) * 1000);
        m.ws.send(JSON.stringify({ type: "start", version: 1, sample_rate: m.rate }));
        for (const b of m.preroll) m.ws.send(b.data);
        m.preroll = [];
        m.speaking = true; m.silent = 0; m.blocks = 0;
        state.vad = "speaking";
        $("mic-state").textContent = "speaking";
      }
      return;
    }
    m.ws.send(data);
    m.blocks++;
    m.silent = loud ? 0 : m.silent + 1;
    if (m.silent >= VAD.hangBlocks || m.blocks >= VAD.maxBlocks) {
      m.ws.send(JSON.stringify({ type: "speech.end" }));
      m.speaking = false; m.voiced = 0;
      state.vad = "listening";
      $("mic-state").textContent = "listening";
    }
  }

  $("mic-button").addEventListener("click", () => {
    if (mic) stopMic();
    else startMic().catch((e) => { stopMic(); $("mic-state").textContent = `microphone: ${e.message}`; state.lastError = e.message; });
  });

  // Mic-to-viewer latency: the microphone is replaced by silence and tone bursts; each burst's onset as the page
  // captured it is paired with the onset the viewer hears.
  async function measureLatency(bursts = 5) {
    if (!state.selected) { $("latency-result").textContent = "select a session first"; return null; }
    const started = !mic;
    if (started) await startMic();
    const m = mic;
    m.node.port.postMessage({ test: true });
    state.measuring = true;
    await new Promise((r) => setTimeout(r, 1200));
    const out = [];
    for (let i = 0; i < bursts && mic === m; i++) {
      $("latency-result").textContent = `measuring ${i + 1}/${bursts}...`;
      const nMic = state.micOnsets.length;
      m.node.port.postMessage({ tone: 0.3 });
      const t0 = performance.now();
      while (performance.now() - t0 < 3000 && !(state.micOnsets.length > nMic &&
             state.viewerOnsets.some((t) => t > state.micOnsets[nMic]))) await new Promise((r) => setTimeout(r, 20));
      if (state.micOnsets.length > nMic) {
        const tm = state.micOnsets[nMic];
        const tv = state.viewerOnsets.find((t) => t > tm);
        if (tv !== undefined) { out.push(tv - tm); state.latencyLags.push(state.viewerClockLagMs ? state.viewerClockLagMs() : null); }
      }
      await new Promise((r) => setTimeout(r, 1500));
    }
    if (mic === m) m.node.port.postMessage({ test: false });
    state.measuring = false;
    if (started) stopMic();
    out.sort((a, b) => a - b);
    state.latencies = out;
    $("latency-result").textContent = out.length ?
      `mic-to-viewer p50 ${Math.round(out[Math.floor(out.length / 2)])} ms (n=${out.length}, min ${Math.round(out[0])}, ` +
      `max ${Math.round(out[out.length - 1])})` : "no tone came back: is the preview playing?";
    return out;
  }
  state.measureLatency = measureLatency;
  $("latency-button").addEventListener("click", () => measureLatency().catch((e) => { $("latency-result").textContent = e.message; }));

  // ------------------------------------------------------------------------------------------ direct

  async function direct(text) {
    if (!state.selected) { $("instruction-result").textContent = "select a session first"; return; }
    try {
      const r = await api("POST", `/studio/api/sessions/${encodeURIComponent(state.selected)}/instruction`, { text });
      state.instructions++;
      $("instruction-result").textContent = `directing: ${r.cues.join(", ") || "no cue recognised"}` +
        (r.warnings.length ? ` (not understood: ${r.warnings.join("; ")})` : "");
    } catch (err) {
      $("instruction-result").textContent = err.message;
    }
  }
  for (const b of $("direct-buttons").querySelectorAll("button")) b.addEventListener("click", () => direct(b.dataset.instruction));
  $("instruction-form").addEventListener("submit", (e) => { e.preventDefault(); direct($("instruction-text").value); });

  async function interrupt() {
    if (!state.selected) return;
    try {
      const r = await api("POST", `/v1/sessions/${encodeURIComponent(state.selected)}/interrupt`);
      $("instruction-result").textContent = r.interrupted.length ? "interrupted" : "nothing was playing";
    } catch (err) { $("instruction-result").textContent = err.message; }
  }
  $("interrupt-button").addEventListener("click", interrupt);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") { e.preventDefault(); interrupt(); } });

  // ------------------------------------------------------------------------------------------ live figures

  const PLOTS = {
    "first-frame": (s) => s.avatar_first_frame_ms && s.avatar_first_frame_ms.p50,
    fps: (s) => s.output_fps,
    underrun: (s) => s.underrun_ms,
    drift: (s) => s.av_drift_ms,
  };
  const series = {};
  function resetPlots() { for (const k in PLOTS) { series[k] = []; draw(k); $(`val-${k}`).textContent = ""; } }

  function draw(key) {
    const canvas = $(`plot-${key}`), ctx = canvas.getContext("2d");
    const data = series[key];
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const vals = data.filter((v) => typeof v === "number");
    if (vals.length < 2) return;
    let lo = Math.min(...vals), hi = Math.max(...vals);
    if (hi - lo < 1e-6) { hi += 1; lo -= 1; }
    ctx.strokeStyle = "#5cc8ff";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    data.forEach((v, i) => {
      if (typeof v !== "number") return;
      const x = (i / 59) * (canvas.width - 4) + 2;
      const y = canvas.height - 4 - ((v - lo) / (hi - lo)) * (canvas.height - 8);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
    ctx.fillStyle = "#9aa3ad";
    ctx.font = "10px sans-serif";
    ctx.fillText(hi.toFixed(1), 2, 10);
    ctx.fillText(lo.toFixed(1), 2, canvas.height - 2);
  }

  async function pollStats() {
    if (pc) {
      const report = await pc.getStats().catch(() => null);
      if (report) report.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") state.framesDecoded = s.framesDecoded || 0; });
    }
    if (!state.selected) return;
    try {
      const st = await api("GET", `/v1/sessions/${encodeURIComponent(state.selected)}/stats`);
      state.stats = st;
      for (const [k, f] of Object.entries(PLOTS)) {
        const v = f(st);
        series[k].push(typeof v === "number" ? v : null);
        if (series[k].length > 60) series[k].shift();
        $(`val-${k}`).textContent = typeof v === "number" ? v.toFixed(1) : "-";
        draw(k);
      }
    } catch (e) { /* the session may just have ended */ }
  }

  // ------------------------------------------------------------------------------------------ start

  async function init() {
    resetPlots();
    if (!adminToken) { setStatus("open this page with ?token=ADMIN_TOKEN (printed by avatarcast serve)"); return; }
    try {
      await Promise.all([refreshAvatars(), refreshSessions(), loadVoices()]);
      setStatus("ready");
    } catch (err) {
      setStatus(`cannot reach the server API: ${err.message}`);
    }
    setInterval(pollStats, 1000);
    setInterval(() => refreshSessions().catch(() => {}), 5000);
  }
  window.addEventListener("beforeunload", () => { stopMic(); if (whepResource) fetch(whepResource + whepQuery, { method: "DELETE", keepalive: true }); });
  init();
})();
