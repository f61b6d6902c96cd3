// The console page: an xterm.js terminal on /console/<device id>/socket.
// Messages both ways are {"event": ..., "payload": {...}} (console/protocol.py).
(function () {
  "use strict";

  const script = document.getElementById("console-script");
  // Lowered by the hub's "access" message when the role changes (never raised
  // here: the typing controls exist only on a page opened with write access).
  let canWrite = script.dataset.canWrite === "true";
  const CHUNK = 1024; // bytes per file-data chunk, as nerves_hub_link uses
  const WINDOW = 32; // upload chunks in flight before waiting for the hub's progress
  const RESIZE_DEBOUNCE_MS = 500;

  const term = new window.Terminal({
    cursorBlink: true,
    convertEol: false,
    scrollback: 5000,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
    fontSize: 14,
    lineHeight: 1.2, // at 1.0 some monospace fonts clip underscores
    disableStdin: !canWrite,
  });
  const fit = new window.FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  term.focus();

  const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + window.location.host + script.dataset.socket);
  const state = { metadata: null, connected: false, statusKnown: false, upload: null, downloads: {}, closed: false };
  window.nervesConsole = { term: term, socket: socket, state: state };

  const $ = (id) => document.getElementById(id);
  const notice = (text) => { $("notice").textContent = text; };
  const send = (event, payload) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ event: event, payload: payload }));
  };
  const sendSize = () => { if (canWrite && state.connected) send("window_size", { height: term.rows, width: term.cols }); };

  function setConnected(connected, files) {
    const badge = $("connection");
    const changed = connected !== state.connected;
    state.connected = connected;
    badge.textContent = connected ? "device connected" : "device offline";
    badge.className = "badge " + (connected ? "online" : "offline");
    if (files !== undefined && state.metadata) state.metadata.files = files;
    updateUploadButton();
    // The first status is the state at opening, not news for the terminal.
    const news = state.statusKnown;
    state.statusKnown = true;
    if (changed && news) {
      term.write(connected
        ? "\r\n\x1b[32m*** device connected ***\x1b[0m\r\n"
        : "\r\n\x1b[31m*** device disconnected: waiting for it to come back ***\x1b[0m\r\n");
    }
    if (connected) sendSize();
  }

  function presence(username, action) {
    const list = $("presence");
    const item = document.createElement("li");
    item.textContent = username + " " + action + " the console";
    list.prepend(item);
    while (list.children.length > 8) list.lastChild.remove();
  }

  // --- files from the device: rebuilt here and offered as a download ---------------
  function download(event, payload) {
    const name = payload.filename;
    if (event === "file-data/start") {
      state.downloads[name] = [];
      notice("receiving " + name + " from the device…");
    } else if (event === "file-data" && state.downloads[name]) {
      const bytes = Uint8Array.from(atob(payload.data), (c) => c.charCodeAt(0));
      state.downloads[name][payload.chunk] = bytes;
    } else if (event === "file-data/stop" && state.downloads[name]) {
      const blob = new Blob(state.downloads[name].filter(Boolean), { type: "application/octet-stream" });
      delete state.downloads[name];
      const list = $("downloads");
      list.querySelectorAll(".hint").forEach((n) => n.remove());
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = name;
      link.textContent = name + " (" + blob.size + " bytes)";
      const item = document.createElement("li");
      item.appendChild(link);
      list.prepend(item);
      notice(name + " received from the device");
      link.click();
    }
  }

  // --- files to the device -----------------------------------------------------------
  function updateUploadButton() {
    const button = $("upload-button");
    if (!button) return;
    const files = state.metadata && state.metadata.files;
    button.disabled = !(canWrite && state.connected && files && !state.upload && $("upload-input").files.length);
    if (state.metadata && !files) $("upload-status").textContent = "This device's console does not take files.";
  }

  function startUpload() {
    const file = $("upload-input").files[0];
    if (!file) return;
    if (file.size > state.metadata.upload_max_size) {
      $("upload-status").textContent = file.name + " is larger than the limit of " + state.metadata.upload_max_size + " bytes.";
      return;
    }
    file.arrayBuffer().then((buffer) => {
      const bytes = new Uint8Array(buffer);
      state.upload = { name: file.name, bytes: bytes, next: 0, acked: 0, total: Math.ceil(bytes.length / CHUNK) };
      const progress = $("upload-progress");
      progress.hidden = false;
      progress.value = 0;
      $("upload-status").textContent = "uploading " + file.name + "…";
      updateUploadButton();
      send("file-data/start", { filename: file.name, size: bytes.length });
      pumpUpload();
    });
  }

  function pumpUpload() {
    const up = state.upload;
    if (!up) return;
    // Sent in order on one socket; at most WINDOW chunks ahead of the hub's acks.
    while (up.next < up.total && up.next - up.acked < WINDOW) {
      const slice = up.bytes.subarray(up.next * CHUNK, (up.next + 1) * CHUNK);
      let binary = "";
      for (let i = 0; i < slice.length; i++) binary += String.fromCharCode(slice[i]);
      send("file-data", { filename: up.name, chunk: up.next, data: btoa(binary) });
      up.next += 1;
    }
    if (up.next === up.total && !up.stopSent) {
      up.stopSent = true;
      send("file-data/stop", { filename: up.name });
    }
  }

  function uploadProgress(payload) {
    const up = state.upload;
    if (!up || payload.filename !== up.name) return;
    up.acked = Math.ceil(payload.received / CHUNK);
    $("upload-progress").value = payload.size ? payload.received / payload.size : 1;
    if (payload.done) {
      $("upload-status").textContent = up.name + " sent to the device (" + payload.size + " bytes)";
      state.upload = null;
      updateUploadButton();
    } else {
      $("upload-status").textContent = "uploading " + up.name + ": " + payload.received + " / " + payload.size + " bytes";
      pumpUpload();
    }
  }

  // --- the socket ------------------------------------------------------------------
  socket.addEventListener("message", (message) => {
    const { event, payload } = JSON.parse(message.data);
    switch (event) {
      case "metadata":
        state.metadata = payload;
        break;
      case "access":
        if (!payload.can_write && canWrite) {
          canWrite = false;
          term.options.disableStdin = true;
          ["upload-button", "restart-button", "upload-input"].forEach((id) => { if ($(id)) $(id).disabled = true; });
          notice("Your role is now " + payload.role + ": you may watch this console, not type.");
        }
        break;
      case "status":
        setConnected(payload.connected, payload.files);
        break;
      case "up":
        term.write(payload.data);
        break;
      case "file-data/start":
      case "file-data":
      case "file-data/stop":
        download(event, payload);
        break;
      case "upload_progress":
        uploadProgress(payload);
        break;
      case "presence":
        presence(payload.username, payload.action);
        break;
      case "closed":
        state.closed = true;
        term.write("\r\n\x1b[33m*** console " + payload.reason + " ***\x1b[0m\r\n");
        break;
      case "error":
        notice(payload.message);
        if (payload.filename && state.upload) {
          $("upload-status").textContent = "upload failed: " + payload.message;
          state.upload = null;
          updateUploadButton();
        }
        break;
    }
  });
  socket.addEventListener("close", () => {
    $("connection").textContent = "console closed";
    $("connection").className = "badge offline";
    term.write("\r\n\x1b[33m*** console closed: reload the page to open it again ***\x1b[0m\r\n");
  });

  if (canWrite) {
    term.onData((data) => { if (canWrite) send("dn", { data: data }); });
    $("upload-input").addEventListener("change", updateUploadButton);
    $("upload-button").addEventListener("click", startUpload);
    $("restart-button").addEventListener("click", () => send("restart", {}));
  }
  let resizeTimer = null;
  term.onResize(() => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(sendSize, RESIZE_DEBOUNCE_MS);
  });
  window.addEventListener("resize", () => fit.fit());
})();
