// The bare Node `ws` broadcast server benchmarks/fanout.py compares against: the least a
// chat server can do. It speaks just enough of our protocol for the load generator
// (hello, join -> joined, send -> a `message` to everyone in the room, the sender
// included); it stores nothing and checks nothing.
// Usage: node ws_server.mjs <port>
import { WebSocketServer } from "ws";

const rooms = new Map(); // room name -> Set of sockets
let seq = 0;
const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.argv[2]), perMessageDeflate: false });
wss.on("connection", (ws) => {
  ws.send('{"op":"hello","v":1}');
  ws.on("message", (data) => {
    const frame = JSON.parse(data.toString());
    if (frame.op === "join") {
      if (!rooms.has(frame.room)) rooms.set(frame.room, new Set());
      rooms.get(frame.room).add(ws);
      ws.room = frame.room;
      ws.send(JSON.stringify({ op: "joined", room: frame.room, id: frame.id }));
    } else if (frame.op === "send" && ws.room !== undefined) {
      seq += 1;
      const out = JSON.stringify({
        op: "message",
        room: frame.room,
        seq,
        id: frame.id,
        user: { username: "u" },
        ts: Date.now() / 1000,
        body: frame.body,
      });
      for (const peer of rooms.get(ws.room)) peer.send(out);
    }
  });
  ws.on("close", () => rooms.get(ws.room)?.delete(ws));
});
wss.on("listening", () => console.log("listening"));
