// bench/http/node_http.mjs URL TOTAL INFLIGHT: Node's http module, keep-alive agent.
import http from "node:http";
const [url, total, inflight] = [process.argv[2], +process.argv[3], +process.argv[4]];
const agent = new http.Agent({ keepAlive: true, maxSockets: inflight });
let started = 0, bytes = 0, fail = 0;
const get = () => new Promise((resolve) => {
  http.get(url, { agent }, (res) => {
    let n = 0;
    res.on("data", (c) => { n += c.length; });
    res.on("end", () => { if (res.statusCode === 200) bytes += n; else fail++; resolve(); });
  }).on("error", () => { fail++; resolve(); });
});
const t0 = performance.now();
async function worker() { while (started < total) { started++; await get(); } }
await Promise.all(Array.from({ length: inflight }, worker));
agent.destroy();
console.log(`${((performance.now() - t0) / 1000).toFixed(4)} ${bytes} ${fail}`);
