// BullMQ peer of `cargo bench --bench lanes -- fast` (benches/lanes.rs drives it; not a test).
//
//   node benches/peers/bullmq/drain.js --redis redis://127.0.0.1:PORT/1 --prefix bullbench \
//        --sink http://127.0.0.1:PORT/notify --n 50000 --concurrency 64
//
// 1. Empties the queue, then adds N jobs with addBulk (chunks of 1,000) while no worker runs.
// 2. Makes a Worker (concurrency C, BullMQ defaults otherwise) whose processor POSTs the job's
//    body to the sink over a keep-alive agent and fails the job on a non-2xx answer; once it is
//    connected, prints {"event":"start"} and runs it.
// 3. When every job has completed or failed, prints {"event":"done", ...}, then waits for its
//    standard input to close (so the harness can read this process's CPU time) and exits.
//
// With --rate R and --start T (ms since the epoch), the jobs are delayed jobs instead: job i
// falls due at T + i * 1000 / R (the steady peer of `cargo bench --bench engine -- steady`,
// BENCH_BULLMQ=1), and its body is "<due ms>:q<i>" so the sink measures receipt - due.
//
// Output: one JSON object per line on stdout; diagnostics on stderr.

"use strict";

const http = require("node:http");
const { Queue, Worker } = require("bullmq");

function args() {
  const out = { redis: "redis://127.0.0.1:6379/1", prefix: "bullbench", sink: "", n: 50000, concurrency: 64, rate: 0, start: 0 };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in out)) throw new Error(`unknown option ${argv[i]}`);
    out[key] = typeof out[key] === "number" ? Number(argv[i + 1]) : argv[i + 1];
  }
  if (!out.sink) throw new Error("--sink URL is required");
  return out;
}

function connection(redisUrl) {
  const u = new URL(redisUrl);
  const db = Number(u.pathname.replace(/^\//, "") || "0");
  // maxRetriesPerRequest: null is what BullMQ requires of a Worker's connection.
  return { host: u.hostname, port: Number(u.port || 6379), db, maxRetriesPerRequest: null };
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function main() {
  const opt = args();
  const conn = connection(opt.redis);
  const name = "lanes";
  const queue = new Queue(name, { connection: conn, prefix: opt.prefix });
  await queue.waitUntilReady();
  await queue.obliterate({ force: true });

  const enqueueStarted = Date.now();
  const chunk = 1000;
  for (let base = 0; base < opt.n; base += chunk) {
    const jobs = [];
    const now = Date.now();
    for (let i = base; i < Math.min(base + chunk, opt.n); i++) {
      if (opt.rate > 0) {
        const due = opt.start + Math.floor((i * 1000) / opt.rate);
        jobs.push({ name: "notify", data: { body: `${due}:q${i}` }, opts: { delay: Math.max(0, due - now) } });
      } else {
        jobs.push({ name: "notify", data: { body: `0:q${i}` } });
      }
    }
    await queue.addBulk(jobs);
  }
  emit({ event: "enqueued", n: opt.n, ms: Date.now() - enqueueStarted });

  const sink = new URL(opt.sink);
  const agent = new http.Agent({ keepAlive: true, maxSockets: opt.concurrency });
  const post = (body) =>
    new Promise((resolve, reject) => {
      const req = http.request(
        {
          agent,
          host: sink.hostname,
          port: sink.port,
          path: sink.pathname,
          method: "POST",
          headers: { "content-type": "text/plain", "content-length": Buffer.byteLength(body) },
          timeout: 10000,
        },
        (res) => {
          res.resume();
          res.on("end", () => {
            if (res.statusCode >= 200 && res.statusCode < 300) resolve();
            else reject(new Error(`sink answered ${res.statusCode}`));
          });
        },
      );
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", reject);
      req.end(body);
    });

  const worker = new Worker(name, async (job) => post(job.data.body), {
    connection: conn,
    prefix: opt.prefix,
    concurrency: opt.concurrency,
    autorun: false,
  });
  await worker.waitUntilReady();

  let completed = 0;
  let failed = 0;
  let started = 0;
  const finished = new Promise((resolve) => {
    const check = () => {
      if (completed + failed >= opt.n) resolve();
    };
    worker.on("completed", () => {
      completed++;
      check();
    });
    worker.on("failed", (_job, err) => {
      if (failed === 0) process.stderr.write(`bullmq: first failure: ${err && err.message}\n`);
      failed++;
      check();
    });
  });
  worker.on("error", (err) => process.stderr.write(`bullmq worker error: ${err && err.message}\n`));

  started = Date.now();
  emit({ event: "start", at_ms: started });
  worker.run();
  const guard = setTimeout(() => {
    emit({ event: "done", at_ms: Date.now(), elapsed_ms: Date.now() - started, completed, failed, gave_up: true });
  }, 300000);
  await finished;
  clearTimeout(guard);
  const done = Date.now();
  emit({ event: "done", at_ms: done, elapsed_ms: done - started, completed, failed });

  // Hold on until the harness has read our CPU time and closes stdin.
  await new Promise((resolve) => {
    process.stdin.on("end", resolve);
    process.stdin.on("close", resolve);
    process.stdin.resume();
  });
  await worker.close(true);
  await queue.close();
  agent.destroy();
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`bullmq peer failed: ${err && err.stack}\n`);
  process.exit(1);
});
