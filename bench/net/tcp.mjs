// bench/net/tcp.mjs MODE CONNS AMOUNT: Node's `net` on both ends, in one
// process (one loop): a server (net.createServer) and its clients
// (net.connect), written the way Node code is (events and callbacks).
//   echo CONNS N:  CONNS connections at once, each N sequential round trips
//                  of a 64-byte message (write, then wait for the 64 bytes of
//                  the echo); the server writes back whatever it reads.
//   bulk CONNS MB: CONNS connections at once, each sends MB MiB in 64 KiB
//                  writes (waiting for 'drain' when write() says so) to a sink
//                  that counts the bytes and, at the expected count, answers
//                  "ok\n"; the client awaits it.
// Connections are made before the clock starts. Prints "<seconds>".
// The same as bench/net/tcp.lua (weave) and tcp.py (asyncio, uvloop).
import net from "node:net";
import { once } from "node:events";

const [mode, conns, amount] = [process.argv[2], +process.argv[3], +process.argv[4]];
const MSG = 64, CHUNK = 65536, total = amount * 1024 * 1024;

const server = net.createServer({ noDelay: true }, mode === "echo"
  ? (s) => { s.on("data", (d) => s.write(d)); s.on("error", () => {}); }
  : (s) => {
      let got = 0;
      s.on("data", (d) => { got += d.length; if (got === total) s.write("ok\n"); });
      s.on("error", () => {});
    });
server.listen({ host: "127.0.0.1", port: 0, backlog: 4096 });
await once(server, "listening");
const port = server.address().port;

const socks = [];
for (let i = 0; i < conns; i++) {
  const s = net.connect({ host: "127.0.0.1", port, noDelay: true });
  await once(s, "connect");
  socks.push(s);
}

function echo(s) {
  return new Promise((resolve, reject) => {
    const msg = Buffer.alloc(MSG, "x");
    let left = amount, got = 0;
    s.on("data", (d) => {
      got += d.length;
      if (got < MSG) return;
      if (got > MSG) return reject(new Error("bad echo"));
      got = 0;
      if (--left === 0) return resolve();
      s.write(msg);
    });
    s.write(msg);
  });
}

async function bulk(s) {
  const chunk = Buffer.alloc(CHUNK, "x");
  const ack = new Promise((resolve) => {
    let buf = "";
    s.on("data", (d) => { buf += d; if (buf.endsWith("\n")) resolve(buf); });
  });
  let left = total;
  while (left > 0) {
    const ok = s.write(left >= CHUNK ? chunk : chunk.subarray(0, left));
    left -= CHUNK;
    if (!ok) await once(s, "drain");
  }
  if ((await ack) !== "ok\n") throw new Error("no ack");
}

const t0 = process.hrtime.bigint();
await Promise.all(socks.map(mode === "echo" ? echo : bulk));
const dt = Number(process.hrtime.bigint() - t0) / 1e9;
for (const s of socks) s.destroy();
server.close();
console.log(dt.toFixed(4));
