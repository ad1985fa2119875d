"""A WebSocket test server on Debian's python3-websockets (not written by
weave): one behaviour per path.  Usage: ws_server.py PORTFILE [CERT KEY]
(with CERT and KEY it serves wss://).  Writes its port to PORTFILE.

  /echo          every message back, text as text and binary as binary
  /headers       one text message: JSON {headers, subprotocol, path}, then echo
  /fragmented    one text message in 3 fragments, one binary in 2, then echo
  /big?n=N       one binary message of N bytes, then echo
  /close?code=C&reason=R   closes at once with that code and reason
  /silent        stops reading after the handshake: never answers a ping
  /drop          drops the TCP connection without a close frame
  /pingme        pings the client and sends "pong ok" when the pong came
  /reject        answers HTTP 403 instead of switching protocols
  /chat          a chat room: every text message goes to everyone in /chat
"""
import asyncio
import http
import json
import ssl
import sys
import urllib.parse

import websockets


ROOM = set()


async def handler(ws, path=None):
    url = urllib.parse.urlparse(ws.path)
    q = dict(urllib.parse.parse_qsl(url.query))
    p = url.path
    if p == "/headers":
        await ws.send(json.dumps({"headers": dict(ws.request_headers.raw_items()),
                                  "subprotocol": ws.subprotocol, "path": ws.path}))
    elif p == "/fragmented":
        await ws.send(iter(["frag-", "ment-", "ed"]))
        await ws.send(iter([b"\x00\x01", b"\x02\xff"]))
    elif p == "/big":
        await ws.send(bytes(i % 251 for i in range(int(q.get("n", "1000000")))))
    elif p == "/close":
        await ws.close(int(q.get("code", "1000")), q.get("reason", ""))
        return
    elif p == "/silent":
        ws.transport.pause_reading()
        await asyncio.sleep(3600)
        return
    elif p == "/drop":
        ws.transport.abort()
        return
    elif p == "/chat":
        ROOM.add(ws)
        try:
            async for msg in ws:
                websockets.broadcast(ROOM, msg)
        finally:
            ROOM.discard(ws)
        return
    elif p == "/pingme":
        waiter = await ws.ping(b"hello")
        await asyncio.wait_for(waiter, 5)
        await ws.send("pong ok")
    async for msg in ws:
        await ws.send(msg)


async def reject(path, headers):
    if path.startswith("/reject"):
        return http.HTTPStatus.FORBIDDEN, [("Content-Type", "text/plain")], b"go away\n"
    return None


async def main():
    ctx = None
    if len(sys.argv) > 3:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    async with websockets.serve(handler, "127.0.0.1", 0, ssl=ctx, max_size=None,
                                subprotocols=["chat", "superchat"], process_request=reject,
                                ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        with open(sys.argv[1], "w") as f:
            f.write(str(port))
        await asyncio.Future()


asyncio.run(main())
