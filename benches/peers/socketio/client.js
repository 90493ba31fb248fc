// The peer's browsers: `node client.js <conns> <port1,port2>` opens <conns> socket.io websockets
// split over the servers, socket i following order `bench-i`. Prints "subscribed" when every
// socket has joined its room. On a line "report" on stdin it prints one JSON line: results
// received and publish-to-client latency percentiles (µs, wall clock of this machine), once no
// result has arrived for a second, then forgets them.
const { io } = require("socket.io-client");
const readline = require("readline");

const conns = Number(process.argv[2]);
const ports = process.argv[3].split(",");
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

let latencies = [];
let lastArrival = 0;
let joined = 0;
let opening = 0;
let next = 0;
const LIMIT = 200; // connections being opened at once, as the Rust client does

function open() {
  while (opening < LIMIT && next < conns) {
    const i = next++;
    opening++;
    const socket = io(`http://127.0.0.1:${ports[i % ports.length]}`, {
      transports: ["websocket"],
      reconnection: false,
    });
    socket.on("connect", () => {
      socket.emit("subscribe", `bench-${i}`, () => {
        opening--;
        joined++;
        if (joined === conns) console.log("subscribed");
        open();
      });
    });
    socket.on("connect_error", (e) => {
      console.error(`socket ${i}: ${e.message}`);
      process.exit(1);
    });
    socket.on("result", (msg) => {
      lastArrival = Date.now();
      latencies.push(nowUs() - msg.t_us);
    });
  }
}
open();

readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  if (line.trim() !== "report") return;
  // Results still arriving belong to this round: wait until none came for a second.
  while (Date.now() - lastArrival < 1000) await new Promise((r) => setTimeout(r, 100));
  const sorted = Float64Array.from(latencies).sort();
  const pct = (p) => (sorted.length ? sorted[Math.round((sorted.length - 1) * p)] : 0);
  console.log(
    JSON.stringify({
      received: sorted.length,
      p50: pct(0.5),
      p90: pct(0.9),
      p99: pct(0.99),
      p999: pct(0.999),
      max: sorted.length ? sorted[sorted.length - 1] : 0,
    }),
  );
  latencies = [];
});
