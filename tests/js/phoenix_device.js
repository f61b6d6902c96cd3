// A device session driven by the official Phoenix JavaScript client.
//
//   node phoenix_device.js   (settings in the NH_* environment variables)
//
// NH_URL        ws://127.0.0.1:PORT/device-socket (the client appends /websocket?vsn=2.0.0)
// NH_HEADERS    JSON list of [name, value]: the x-nh-* upgrade headers
// NH_JOIN       JSON object: the `device` join parameters
// NH_HEARTBEATS how many heartbeat replies to wait for before leaving (default 3)
//
// Browsers cannot set upgrade headers, so the transport is the `ws` package
// with the headers bound in; Phoenix constructs it as `new transport(url, protocols)`.
// Every frame received is printed as one JSON line ({"frame": ...}); the
// milestones are printed as {"step": ...}. Exit code 0 means the session ran
// to its end: join ok, heartbeats answered, leave ok, clean close.

"use strict";

const { Socket } = require("phoenix");
const WebSocket = require("ws");

const url = process.env.NH_URL;
const headers = Object.fromEntries(JSON.parse(process.env.NH_HEADERS || "[]"));
const joinParams = JSON.parse(process.env.NH_JOIN || "{}");
const wantedHeartbeats = Number(process.env.NH_HEARTBEATS || "3");

function out(record) {
  process.stdout.write(JSON.stringify(record) + "\n");
}

function fail(reason) {
  out({ step: "failed", reason });
  process.exit(1);
}

class SignedWebSocket extends WebSocket {
  constructor(address, protocols) {
    super(address, protocols, { headers });
    // The status of a refused upgrade, which the browser API would hide.
    this.on("unexpected-response", (_request, response) => {
      out({ step: "refused", status: response.statusCode, reason: response.headers["nh-connection-error-reason"] });
      process.exit(2);
    });
  }
}

const socket = new Socket(url, {
  transport: SignedWebSocket,
  heartbeatIntervalMs: 250,
  // One attempt: a refusal must end the run, not start a reconnect loop.
  reconnectAfterMs: () => 60000,
});

let heartbeats = 0;
let left = false;
socket.onMessage((message) => {
  out({ frame: [message.join_ref ?? null, message.ref ?? null, message.topic, message.event, message.payload] });
  if (leaveRef !== null && message.ref === leaveRef && message.topic === "device") {
    leftOnServer(message.payload.status);
    return;
  }
  if (message.topic === "phoenix" && message.event === "phx_reply" && message.payload.status === "ok") {
    heartbeats += 1;
    if (heartbeats === wantedHeartbeats) {
      out({ step: "heartbeats", count: heartbeats });
      leave();
    }
  }
});
socket.onError(() => fail("socket error"));
socket.onClose((event) => {
  if (!left) fail(`socket closed with code ${event.code}`);
});

const channel = socket.channel("device", joinParams);
channel.on("fwup_public_keys", (payload) => out({ step: "fwup_public_keys", payload }));
channel.on("identify", (payload) => out({ step: "identify", payload }));

// Phoenix resolves a leave locally, without waiting for the server: the
// session ends when the server's own reply to the phx_leave has arrived.
let leaveRef = null;
function leave() {
  leaveRef = channel.leave().ref;
}

function leftOnServer(status) {
  out({ step: "left", status });
  left = true;
  socket.disconnect(() => {
    out({ step: "closed" });
    process.exit(0);
  }, 1000);
}

socket.connect();
channel
  .join()
  .receive("ok", (response) => out({ step: "joined", response }))
  .receive("error", (response) => fail(`join refused: ${JSON.stringify(response)}`))
  .receive("timeout", () => fail("join timed out"));

setTimeout(() => fail("session did not finish in 20 s"), 20000).unref();
