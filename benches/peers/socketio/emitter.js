// The peer's publisher: `node emitter.js <redis-url> <rate> <seconds> <conns>` sends <rate>
// results per second for <seconds>, paced every millisecond, each to the room of one random
// order of `bench-0` … `bench-<conns-1>`, with the socket.io Redis emitter (the way an app
// server outside the socket.io cluster publishes). Prints the count published.
const { Emitter } = require("@socket.io/redis-emitter");
const { createClient } = require("redis");

const [url, rate, seconds, conns] = [
  process.argv[2],
  Number(process.argv[3]),
  Number(process.argv[4]),
  Number(process.argv[5]),
];
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

(async () => {
  const client = createClient({ url });
  await client.connect();
  const emitter = new Emitter(client);
  const total = rate * seconds;
  const perTick = Math.max(1, Math.floor(rate / 1000));
  const start = performance.now();
  let published = 0;
  let seed = 7n;
  while (published < total) {
    // Catch up to where the clock says we should be (like a bursting interval).
    const due = Math.min(total, Math.floor((performance.now() - start) + 1) * perTick);
    while (published < due) {
      seed = (seed * 6364136223846793005n + 1442695040888963407n) & 0xffffffffffffffffn;
      const order = Number((seed >> 33n) % BigInt(conns));
      emitter.to(`bench-${order}`).emit("result", { status: "paid", t_us: nowUs() });
      published++;
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  const secs = (performance.now() - start) / 1000;
  console.log(JSON.stringify({ published, seconds: secs }));
  await client.quit();
})();
