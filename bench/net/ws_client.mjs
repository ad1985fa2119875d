// bench/net/ws_client.mjs URL CONNS N: npm `ws` clients (no compression),
// CONNS connections at once, each N sequential echoes of a 32-byte text
// message (send, then wait for the echo). Connections are made before the
// clock starts. Prints "<seconds>". `ws` from $BENCH_NODE_DIR.
import { createRequire } from "node:module";
import { once } from "node:events";
import path from "node:path";

const require = createRequire(path.resolve(process.env.BENCH_NODE_DIR || "build/bench-node", "package.json"));
const WebSocket = require("ws");
const [url, conns, n] = [process.argv[2], +process.argv[3], +process.argv[4]];
const MSG = "x".repeat(32);

const socks = [];
for (let i = 0; i < conns; i++) {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  await once(ws, "open");
  socks.push(ws);
}

function run(ws) {
  return new Promise((resolve, reject) => {
    let left = n;
    ws.on("message", (data, isBinary) => {
      if (isBinary || data.length !== MSG.length) return reject(new Error("bad echo"));
      if (--left === 0) return resolve();
      ws.send(MSG);
    });
    ws.send(MSG);
  });
}

const t0 = process.hrtime.bigint();
await Promise.all(socks.map(run));
const dt = Number(process.hrtime.bigint() - t0) / 1e9;
for (const ws of socks) ws.terminate();
console.log(dt.toFixed(4));
