// bench/http/node_h2.mjs URL TOTAL INFLIGHT CAFILE: Node's http2 module, one
// session (one TLS connection), INFLIGHT concurrent streams; CAFILE as the CA.
import http2 from "node:http2";
import fs from "node:fs";
const [url, total, inflight, cafile] = [process.argv[2], +process.argv[3], +process.argv[4], process.argv[5]];
const u = new URL(url);
const session = http2.connect(u.origin, { ca: fs.readFileSync(cafile) });
let started = 0, bytes = 0, fail = 0;
const get = () => new Promise((resolve) => {
  const req = session.request({ ":path": u.pathname + u.search });
  let status = 0, n = 0;
  req.on("response", (h) => { status = h[":status"]; });
  req.on("data", (c) => { n += c.length; });
  req.on("end", () => { if (status === 200) bytes += n; else fail++; resolve(); });
  req.on("error", () => { fail++; resolve(); });
  req.end();
});
const t0 = performance.now();
async function worker() { while (started < total) { started++; await get(); } }
await Promise.all(Array.from({ length: inflight }, worker));
session.close();
console.log(`${((performance.now() - t0) / 1000).toFixed(4)} ${bytes} ${fail}`);
