// bench/net/ws_server.mjs PORTFILE: a WebSocket echo server (npm `ws`, no
// compression) on 127.0.0.1, any free port, written to PORTFILE. Each
// message goes back as it came (text as text, binary as binary). Runs until
// killed. `ws` is loaded from $BENCH_NODE_DIR (build/bench-node), where
// bench/net/run.sh installs it.
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";
import path from "node:path";

const require = createRequire(path.resolve(process.env.BENCH_NODE_DIR || "build/bench-node", "package.json"));
const { WebSocketServer } = require("ws");

const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate: false, backlog: 4096 });
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on("error", () => {});
});
wss.on("listening", () => writeFileSync(process.argv[2], String(wss.address().port)));
