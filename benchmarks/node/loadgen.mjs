// Load generator for benchmarks/fanout.py: one process, many WebSocket clients.
//
// Speaks the jupyter-chat-ext protocol ("chat") and Socket.IO v4 over a raw WebSocket
// ("socketio"), so the same code drives every server under test. Each client joins
// one room; `senders` of them send `rate` messages/s in all for `duration` s, each
// body carrying its send time; every client counts the copies it receives and their
// latency. Prints one JSON object with the results.
//
// Usage: node loadgen.mjs '<json config>'
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const cfg = JSON.parse(process.argv[2]);
const now = () => performance.timeOrigin + performance.now();
const latencies = new Float64Array(Math.max(1, cfg.expected || 1));
let copies = 0;
let latencyCount = 0;

function record(sentAt) {
  copies += 1;
  if (latencyCount < latencies.length) latencies[latencyCount++] = now() - sentAt;
}

function openChat(index) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(cfg.url, { headers: { Authorization: `token ${cfg.token}` } });
    ws.on("error", reject);
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      const text = data.toString();
      if (text.startsWith('{"op":"message"')) {
        const at = text.indexOf('"body":"');
        record(Number(text.slice(at + 8, text.indexOf("|", at))));
      } else if (text.startsWith('{"op":"hello"')) {
        ws.send(JSON.stringify({ op: "join", room: cfg.room, id: "j" }));
      } else if (text.startsWith('{"op":"joined"')) {
        resolve({
          send(i) {
            ws.send(`{"op":"send","room":"${cfg.room}","id":"${index}-${i}","body":"${now()}|"}`);
          },
          close: () => ws.close(),
        });
      } else if (text.startsWith('{"op":"error"')) {
        console.error(text);
      }
    });
  });
}

function openSocketIO() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${cfg.url}?EIO=4&transport=websocket`);
    ws.on("error", reject);
    ws.on("message", (data) => {
      const text = data.toString();
      if (text[0] === "2") ws.send("3"); // engine.io ping -> pong
      else if (text[0] === "0") ws.send("40"); // open -> connect to namespace "/"
      else if (text.startsWith("40")) ws.send(`42["join","${cfg.room}"]`);
      else if (text.startsWith('42["joined"')) {
        resolve({
          send() {
            ws.send(`42["message","${now()}|"]`);
          },
          close: () => ws.close(),
        });
      } else if (text.startsWith('42["message"')) {
        record(Number(text.slice(14, text.indexOf("|"))));
      }
    });
  });
}

async function main() {
  const open = cfg.kind === "socketio" ? openSocketIO : openChat;
  const clients = [];
  const batch = 100; // connections opened at once
  for (let i = 0; i < cfg.clients; i += batch) {
    const wave = [];
    for (let j = i; j < Math.min(cfg.clients, i + batch); j++) wave.push(open(j));
    clients.push(...(await Promise.all(wave)));
  }
  process.stdout.write(JSON.stringify({ ready: cfg.clients }) + "\n");
  if (cfg.idle) {
    // Idle connections: stay until told to stop (stdin closes).
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on("end", resolve));
    process.exit(0);
  }
  if (cfg.wait_start) {
    // Several generators (clients split over replicas): start together, once all joined.
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.once("data", resolve));
  }
  const senders = clients.slice(0, cfg.senders);
  const total = Math.round(cfg.rate * cfg.duration);
  const cpuStart = process.cpuUsage();
  const start = now();
  let sent = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor(((now() - start) / 1000) * cfg.rate));
      while (sent < due) {
        senders[sent % senders.length].send(sent);
        sent += 1;
      }
      if (sent >= total) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
  // Split over several generators, each client also receives the others' messages.
  const expected = cfg.total_copies || total * cfg.clients;
  const deadline = now() + 1000 * (cfg.drain || 3);
  while (copies < expected && now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  const elapsed = (now() - start) / 1000;
  const cpu = process.cpuUsage(cpuStart);
  const sorted = Array.from(latencies.subarray(0, latencyCount)).sort((a, b) => a - b);
  const pct = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN);
  const result = {
    sent: total,
    expected,
    delivered: copies,
    lost: expected - copies,
    copies_per_s: copies / elapsed,
    p50_ms: pct(0.5),
    p99_ms: pct(0.99),
    max_ms: sorted.length ? sorted[sorted.length - 1] : NaN,
    generator_us_per_copy: copies ? (cpu.user + cpu.system) / copies : NaN,
  };
  process.stdout.write(JSON.stringify(result) + "\n");
  for (const c of clients) c.close();
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
