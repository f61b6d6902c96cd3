// Small behaviours of the organization pages: the org switcher, confirmations,
// select-all, firmware upload with progress and validation polling, the
// live rollout view and the live device rows and counts (initLive). No
// framework; every page works without it, except the upload progress and the
// live refresh.
"use strict";

function csrfToken(form) {
  const input = form.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

function text(el, value) {
  if (el) el.textContent = value;
}

function initSwitcher() {
  document.querySelectorAll("select[data-navigate]").forEach((select) => {
    select.addEventListener("change", () => {
      if (select.value) window.location.href = select.value;
    });
  });
}

function initConfirm() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  document.querySelectorAll("button[data-confirm]").forEach((button) => {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  });
}

function initCheckAll() {
  document.querySelectorAll("input[data-check-all]").forEach((box) => {
    box.addEventListener("change", () => {
      const name = box.dataset.checkAll;
      box.form.querySelectorAll(`input[type=checkbox][name="${name}"]`).forEach((b) => { b.checked = box.checked; });
    });
  });
}

function pollFirmware(url, result) {
  fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
    .then((r) => r.json())
    .then((data) => {
      showFirmwareRow(data, url);
      if (!data.done) {
        text(result, "Uploaded. Validating…");
        setTimeout(() => pollFirmware(url, result), 1000);
        return;
      }
      result.dataset.status = data.status;
      if (data.status === "valid") {
        text(result, `Valid: version ${data.version}, uuid ${data.uuid}.`);
      } else {
        text(result, `Rejected: ${data.reason}`);
      }
    })
    .catch(() => setTimeout(() => pollFirmware(url, result), 2000));
}

// The firmware list's rows: a just-uploaded file gets its row at the top, and
// a row whose file is still being validated follows its status without a reload.
function fileSize(bytes) {
  const units = ["bytes", "KB", "MB", "GB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

function cell(row, content, name) {
  const td = document.createElement("td");
  if (name) td.dataset.cell = name;
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  row.appendChild(td);
  return td;
}

function fillFirmwareRow(row, data) {
  const version = row.querySelector("td[data-cell=version]");
  if (version) {
    const link = document.createElement("a");
    link.href = data.url;
    link.textContent = data.version || "—";
    version.replaceChildren(link);
  }
  const uuid = row.querySelector("td[data-cell=uuid]");
  if (uuid) {
    const code = document.createElement("code");
    code.textContent = data.uuid || "—";
    uuid.replaceChildren(code);
  }
  const delta = row.querySelector("td[data-cell=delta]");
  if (delta && data.done) text(delta, data.delta_fwup_version ? `fwup ≥ ${data.delta_fwup_version}` : "—");
  const status = row.querySelector("td[data-cell=status]");
  if (status) {
    const badge = document.createElement("span");
    badge.className = `badge ${data.status}`;
    badge.textContent = data.status_label;
    status.replaceChildren(badge);
    if (data.reason) {
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = data.reason;
      status.append(" ", reason);
    }
  }
  row.dataset.status = data.status;
}

function showFirmwareRow(data, url) {
  const table = document.querySelector("#firmware-table tbody");
  if (!table || !data.id) return;
  let row = table.querySelector(`tr[data-firmware="${data.id}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.firmware = data.id;
    row.dataset.statusUrl = url;
    cell(row, data.product);
    cell(row, "", "version");
    cell(row, data.kind_label);
    cell(row, "", "uuid");
    cell(row, data.filename);
    cell(row, fileSize(data.size));
    cell(row, "", "delta");
    cell(row, "", "status");
    cell(row, "just now");
    const columns = table.closest("table").querySelectorAll("thead th").length;
    while (row.children.length < columns) cell(row, "");
    const empty = table.querySelector("#firmware-empty");
    if (empty) empty.remove();
    table.prepend(row);
  }
  fillFirmwareRow(row, data);
}

function followPendingFirmware(row) {
  const url = row.dataset.statusUrl;
  fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
    .then((r) => r.json())
    .then((data) => {
      fillFirmwareRow(row, data);
      if (!data.done) setTimeout(() => followPendingFirmware(row), 2000);
    })
    .catch(() => setTimeout(() => followPendingFirmware(row), 4000));
}

function initFirmwareList() {
  document.querySelectorAll("#firmware-table tr[data-status-url]").forEach(followPendingFirmware);
}

function initUpload() {
  const form = document.querySelector("form[data-upload]");
  if (!form) return;
  const bar = form.querySelector("#upload-progress");
  const result = form.querySelector("#upload-result");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action || window.location.href);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("X-CSRFToken", csrfToken(form));
    bar.hidden = false;
    bar.value = 0;
    result.dataset.status = "uploading";
    text(result, "Uploading…");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
    });
    xhr.addEventListener("load", () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (err) { data = { error: `HTTP ${xhr.status}` }; }
      if (xhr.status === 201) {
        bar.value = 100;
        pollFirmware(data.status_url, result);
      } else {
        result.dataset.status = "error";
        text(result, data.error || `Upload failed (HTTP ${xhr.status}).`);
      }
    });
    xhr.addEventListener("error", () => {
      result.dataset.status = "error";
      text(result, "The upload was interrupted.");
    });
    xhr.send(new FormData(form));
  });
}

function renderRollout(root, data) {
  const bar = root.querySelector("#rollout-bar");
  if (bar) bar.value = data.percent;
  text(root.querySelector("#rollout-on-target"), data.on_target);
  text(root.querySelector("#rollout-members"), data.members);
  text(root.querySelector("#rollout-percent"), data.percent);
  text(root.querySelector("#rollout-inflight"), data.inflight);
  Object.entries(data.counts).forEach(([status, n]) => {
    text(root.querySelector(`td[data-status="${status}"]`), n);
  });
  const state = root.querySelector("#rollout-state");
  if (state) {
    state.replaceChildren();
    const badge = document.createElement("span");
    badge.className = data.is_active ? "badge connected" : "badge";
    badge.textContent = data.is_active ? "active" : "inactive";
    state.append(badge);
    if (data.paused) {
      const paused = document.createElement("span");
      paused.className = "badge warn";
      paused.textContent = `paused: ${data.paused_reason}`;
      state.append(" ", paused);
    }
  }
  const failures = root.querySelector("#rollout-failures");
  if (failures) {
    failures.replaceChildren();
    if (!data.failures.length) {
      const row = failures.insertRow();
      const cell = row.insertCell();
      cell.colSpan = 4;
      cell.textContent = "None.";
    }
    data.failures.forEach((f) => {
      const row = failures.insertRow();
      const link = document.createElement("a");
      link.href = f.device_url;
      link.textContent = f.device;
      row.insertCell().append(link);
      row.insertCell().textContent = f.status;
      row.insertCell().textContent = f.reason;
      row.insertCell().textContent = f.at;
    });
  }
}

// While the live socket is open the rollout view refetches when told its
// deployment moved, and polls only this rarely besides.
const LIVE_POLL_MS = 30000;

function initRollout() {
  const root = document.querySelector("#rollout[data-progress-url]");
  if (!root) return;
  const url = root.dataset.progressUrl;
  const every = Number(root.dataset.refreshMs || 2000);
  let timer = null;
  const tick = () => {
    clearTimeout(timer);
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((data) => renderRollout(root, data))
      .catch(() => {})
      .finally(() => { timer = setTimeout(tick, live.open ? LIVE_POLL_MS : every); });
  };
  live.onDeployment = (ids) => {
    if (ids.includes(Number(root.dataset.deployment))) tick();
  };
  timer = setTimeout(tick, every);
}

// --- Live pages -----------------------------------------------------------------
// One websocket per page (/org/<slug>/live/socket) when the page has something
// to keep current: elements marked data-live-device="<id>" (or inside one) with
// data-live="presence|fw|health|seen|update|progress", counts marked
// data-live-count="<name>" (refetched from live/counts.json), and the rollout
// view. The server sends at most one message a second.
const live = { open: false, onDeployment: null, countsAt: 0, countsTimer: null };

const PRESENCE_LABELS = { connected: "Connected", disconnected: "Disconnected", polling: "Polling", not_seen: "Never connected" };

function liveTargets(id, field) {
  const sel = `[data-live-device="${id}"][data-live~="${field}"], [data-live-device="${id}"] [data-live~="${field}"]`;
  return document.querySelectorAll(sel);
}

function formatSeen(el, iso) {
  if (el.dataset.liveFormat === "datetime") {
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    // In UTC, as the server renders it.
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }
  return "just now";
}

function patchDevice(change) {
  const id = change.id;
  if (change.presence) {
    // The marked element holds the presence badge (its first .badge).
    liveTargets(id, "presence").forEach((el) => {
      el.dataset.presence = change.presence;
      const badge = el.querySelector(".badge");
      if (!badge) return;
      badge.className = `badge ${change.presence}`;
      text(badge, PRESENCE_LABELS[change.presence] || change.presence);
    });
  }
  if (change.fw !== undefined) liveTargets(id, "fw").forEach((el) => text(el, change.fw || "—"));
  if (change.health) {
    liveTargets(id, "health").forEach((el) => {
      el.className = `badge health-${change.health}`;
      text(el, change.health);
    });
  }
  if (change.seen) liveTargets(id, "seen").forEach((el) => text(el, formatSeen(el, change.seen)));
  if (change.update) {
    liveTargets(id, "update").forEach((el) => {
      el.hidden = false;
      el.className = `badge ${change.update}`;
      el.dataset.update = change.update;
      text(el, el.tagName === "SPAN" && el.dataset.liveFormat !== "status" ? `update ${change.update} ${change.progress}%` : change.update);
    });
  }
  if (change.progress !== undefined) liveTargets(id, "progress").forEach((el) => text(el, `${change.progress}%`));
}

function refreshCounts(url) {
  const wait = live.countsAt + 2000 - Date.now();
  if (wait > 0) {
    if (!live.countsTimer) live.countsTimer = setTimeout(() => { live.countsTimer = null; refreshCounts(url); }, wait);
    return;
  }
  live.countsAt = Date.now();
  fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
    .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
    .then((data) => {
      document.querySelectorAll("[data-live-count]").forEach((el) => {
        const name = el.dataset.liveCount;
        // The figure is the element's <b> when it has one (a stat), else the element.
        if (data[name] !== undefined) text(el.querySelector("b") || el, `${data[name]}${data[`${name}_more`] ? "+" : ""}`);
      });
    })
    .catch(() => {});
}

function liveNote(message) {
  let note = document.querySelector("#live-note");
  if (!note) {
    note = document.createElement("p");
    note.id = "live-note";
    note.className = "live-note";
    const main = document.querySelector("main");
    if (main) main.prepend(note);
  }
  text(note, message);
}

function onLiveMessage(data, countsUrl) {
  if (data.type === "closed") {
    liveNote(`Live updates stopped: ${data.reason}.`);
    return;
  }
  if (data.type !== "changes") return;
  data.devices.forEach(patchDevice);
  if (data.seen) {
    document.querySelectorAll("[data-live-device]").forEach((scope) => {
      const badge = scope.querySelector('[data-live~="presence"]') || (scope.matches('[data-live~="presence"]') ? scope : null);
      if (badge && badge.dataset.presence === "connected") {
        liveTargets(scope.dataset.liveDevice, "seen").forEach((el) => text(el, formatSeen(el, data.seen)));
      }
    });
  }
  if (data.more > 0) liveNote(`${data.more} more device(s) changed — counts refreshed; reload the page to see every row.`);
  if (data.counts && document.querySelector("[data-live-count]")) refreshCounts(countsUrl);
  if (data.deployments.length && live.onDeployment) live.onDeployment(data.deployments);
}

function initLive() {
  const main = document.querySelector("main[data-live-org]");
  if (!main) return;
  if (!document.querySelector("[data-live-device], [data-live-count], #rollout[data-deployment]")) return;
  const base = `/org/${encodeURIComponent(main.dataset.liveOrg)}/live/`;
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  let delay = 1000;
  const connect = () => {
    const socket = new WebSocket(`${scheme}//${window.location.host}${base}socket`);
    socket.addEventListener("open", () => {
      live.open = true;
      delay = 1000;
      document.body.dataset.live = "open";
    });
    socket.addEventListener("message", (event) => {
      try { onLiveMessage(JSON.parse(event.data), `${base}counts.json`); } catch (err) { /* a bad message is dropped */ }
    });
    socket.addEventListener("close", (event) => {
      live.open = false;
      document.body.dataset.live = "closed";
      if (event.code === 4003) return; // access ended: no retry
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    });
  };
  connect();
}

document.addEventListener("DOMContentLoaded", () => {
  initSwitcher();
  initConfirm();
  initCheckAll();
  initUpload();
  initFirmwareList();
  initRollout();
  initLive();
});
