// The Node Socket.IO room server benchmarks/fanout.py compares against: clients
// "join" a room and every "message" goes to everyone in it, the sender included.
// Usage: node socketio_server.mjs <port>
import { createServer } from "node:http";
import { Server } from "socket.io";

const http = createServer();
const io = new Server(http, { transports: ["websocket"], perMessageDeflate: false });
io.on("connection", (socket) => {
  socket.on("join", (room) => {
    socket.join(room);
    socket.data.room = room;
    socket.emit("joined", room);
  });
  socket.on("message", (body) => io.to(socket.data.room).emit("message", body));
});
http.listen(Number(process.argv[2]), "127.0.0.1", () => console.log("listening"));
