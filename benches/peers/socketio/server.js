// A socket.io server with the Redis adapter: `node server.js <port> <redis-url>`.
// Each socket sends `subscribe <order>` and joins that room; results come through Redis from
// the emitter (emitter.js). Prints "ready" once listening.
const { createServer } = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const [port, url] = [Number(process.argv[2]), process.argv[3]];

(async () => {
  const pub = createClient({ url });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const httpServer = createServer();
  const io = new Server(httpServer, {
    adapter: createAdapter(pub, sub),
    transports: ["websocket"],
  });
  io.on("connection", (socket) => {
    socket.on("subscribe", (order, ack) => {
      socket.join(order);
      if (typeof ack === "function") ack();
    });
  });
  httpServer.listen(port, "127.0.0.1", () => console.log("ready"));
})();
