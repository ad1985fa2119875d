// bench/http/node_fetch.mjs URL TOTAL INFLIGHT: Node's fetch (undici).
const [url, total, inflight] = [process.argv[2], +process.argv[3], +process.argv[4]];
let started = 0, bytes = 0, fail = 0;
const t0 = performance.now();
async function worker() {
  while (started < total) {
    started++;
    try {
      const r = await fetch(url);
      const b = await r.arrayBuffer();
      if (r.status === 200) bytes += b.byteLength; else fail++;
    } catch (e) { fail++; }
  }
}
await Promise.all(Array.from({ length: inflight }, worker));
console.log(`${((performance.now() - t0) / 1000).toFixed(4)} ${bytes} ${fail}`);
