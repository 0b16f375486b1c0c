// Load generator for benchmarks/fanout.py: one process, many WebSocket clients.
//
// Speaks the jupyter-chat-ext protocol ("chat") and Socket.IO v4 over a raw WebSocket
// ("socketio"), so the same code drives every server under test. Each client joins
// one room; `senders` of them send `rate` messages/s in all for `duration` s, each
// body carrying its send time; every client counts the copies it receives and their
// latency. Prints one JSON object with the results.
//
// With `op: "data"` the senders publish live values instead (`data` frames, ~`value_bytes`
// of JSON each, round-robin over `topics` topics) and clients count `data` frames; each
// value carries its send time `t` and its number `i`, so a client also counts the values
// it never saw (conflated: a newer value of the topic replaced them) and the ages of the
// values it got. `value_rate` adds such a publisher beside chat senders (a mixed load;
// chat and value latencies are then reported apart). With `dedicated_senders` the senders
// are extra connections that count nothing (a publisher that is not a subscriber).
// With "mode": "joins" (benchmarks/joins.py) it fills one room instead: `clients`
// connections each open and join, `window` at a time, pausing when the room holds each
// of `targets` members for `probes` joins one at a time by connections opened at the
// start; it prints the join latencies, then stays idle like "idle" (below).
//
// Usage: node loadgen.mjs '<json config>'
import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const cfg = JSON.parse(process.argv[2]);
const now = () => performance.timeOrigin + performance.now();
const latencies = new Float64Array(Math.max(1, cfg.expected || 1));
let copies = 0;
let latencyCount = 0;
const mixed = Boolean(cfg.value_rate);
const valueOp = cfg.op === "data" || mixed;
const valueLatencies = mixed ? new Float64Array(Math.max(1, cfg.value_expected || 1)) : latencies;
let valueCopies = 0;
let valueLatencyCount = 0;
const pad = "x".repeat(Math.max(0, (cfg.value_bytes || 100) - 48));
const topics = cfg.topics || 1;
const perClient = []; // per counting client: {copies, last value number seen per topic, skipped}

function record(sentAt) {
  copies += 1;
  if (latencyCount < latencies.length) latencies[latencyCount++] = now() - sentAt;
}

function recordValue(stats, text) {
  // The value is relayed as published: {"t":<ms>,"i":<n>,...}; read both without parsing.
  const at = text.indexOf('"value":{"t":') + 13;
  const comma = text.indexOf(",", at);
  const sentAt = Number(text.slice(at, comma));
  const i = Number(text.slice(comma + 5, text.indexOf(",", comma + 5)));
  if (mixed) {
    valueCopies += 1;
    if (valueLatencyCount < valueLatencies.length) valueLatencies[valueLatencyCount++] = now() - sentAt;
  } else {
    record(sentAt);
  }
  stats.copies += 1;
  const topic = i % topics;
  const last = stats.last[topic];
  if (i > last + topics) stats.skipped += (i - last) / topics - 1;
  if (i > last) stats.last[topic] = i;
}

function openChat(index, counting = true) {
  const stats = { copies: 0, skipped: 0, last: new Array(topics).fill(-topics) };
  if (counting) perClient.push(stats);
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(cfg.url, { headers: { Authorization: `token ${cfg.token}` } });
    ws.on("error", reject);
    ws.on("message", (data, isBinary) => {
      if (isBinary) return;
      const text = data.toString();
      if (text.startsWith('{"op":"data"')) {
        if (counting && valueOp) recordValue(stats, text);
      } else if (text.startsWith('{"op":"message"')) {
        if (!counting) return;
        const at = text.indexOf('"body":"');
        record(Number(text.slice(at + 8, text.indexOf("|", at))));
      } else if (text.startsWith('{"op":"hello"')) {
        ws.send(JSON.stringify({ op: "join", room: cfg.room, id: "j" }));
      } else if (text.startsWith('{"op":"joined"')) {
        resolve({
          send(i) {
            ws.send(`{"op":"send","room":"${cfg.room}","id":"${index}-${i}","body":"${now()}|"}`);
          },
          publish(i) {
            const topic = `m${i % topics}`;
            ws.send(`{"op":"data","room":"${cfg.room}","topic":"${topic}","value":{"t":${now()},"i":${i},"p":"${pad}"}}`);
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

// ---- "joins": one room filled by many connections (benchmarks/joins.py) ----

let lastFrameAt = 0; // when any connection last received a frame

// A connection that has said hello but not joined: join() resolves with the latency
// in ms of send `join` -> `joined`. Counts the presence frames (and their bytes).
function connect(token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(cfg.url, { headers: { Authorization: `token ${token}` } });
    let pending = null;
    let sentAt = 0;
    const conn = {
      protocol: 0,
      presence: 0,
      presenceBytes: 0,
      join() {
        return new Promise((res, rej) => {
          pending = { res, rej };
          sentAt = now();
          ws.send(`{"op":"join","room":"${cfg.room}","id":"j"}`);
        });
      },
      close() {
        return new Promise((res) => {
          if (ws.readyState === WebSocket.CLOSED) res();
          else {
            ws.once("close", res);
            ws.close();
          }
        });
      },
    };
    ws.on("error", (err) => (pending ? pending.rej(err) : reject(err)));
    ws.on("message", (data, isBinary) => {
      lastFrameAt = now();
      if (isBinary) return;
      // Only the start of a frame is looked at: the generator must not be the bottleneck.
      const head = data.toString("latin1", 0, 24);
      if (head.startsWith('{"op":"presence"')) {
        conn.presence += 1;
        conn.presenceBytes += data.length;
      } else if (head.startsWith('{"op":"joined"') && pending) {
        const p = pending;
        pending = null;
        p.res(now() - sentAt);
      } else if (head.startsWith('{"op":"hello"')) {
        const text = data.toString();
        conn.protocol = Number((/"protocol":(\d+)/.exec(text) || [0, 0])[1]);
        resolve(conn);
      } else if (head.startsWith('{"op":"error"')) {
        const text = data.toString();
        console.error(text);
        if (pending) pending.rej(new Error(text));
      }
    });
  });
}

// Run `work(i)` for i in order, `window` at a time, while `more()` holds.
async function windowed(window, more, work) {
  let next = 0;
  const worker = async () => {
    while (more(next)) await work(next++);
  };
  await Promise.all(Array.from({ length: window }, worker));
}

// Wait until no connection received anything for `quiet` ms (at most `cap` ms).
async function settle(quiet = 250, cap = 10000) {
  const until = now() + cap;
  while (now() - lastFrameAt < quiet && now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function quantiles(values) {
  const sorted = Float64Array.from(values).sort();
  const pct = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null);
  return { n: sorted.length, p50_ms: pct(0.5), p90_ms: pct(0.9), p99_ms: pct(0.99), max_ms: pct(1) };
}

async function joins() {
  const targets = cfg.targets.filter((t) => t <= cfg.clients);
  const probeConns = [];
  await windowed(
    cfg.window,
    (i) => i < targets.length * cfg.probes,
    async () => probeConns.push(await connect(cfg.token)),
  );
  const fill = []; // [room size when sent, ms]
  const connectMs = [];
  const members = []; // every connection in the room, in the order joined
  const probes = [];
  let inRoom = 0;
  let fillMs = 0;
  let timedOut = false;
  const cpuStart = process.cpuUsage();
  const deadline = now() + 1000 * cfg.fill_timeout;
  let opened = 0;
  for (const [band, target] of targets.entries()) {
    const start = now();
    await windowed(
      cfg.window,
      () => opened + band * cfg.probes < target && now() < deadline,
      async () => {
        opened += 1;
        const t0 = now();
        const conn = await connect(cfg.token);
        connectMs.push(now() - t0);
        const size = inRoom;
        fill.push([size, await conn.join()]);
        inRoom += 1;
        members.push(conn);
      },
    );
    fillMs += now() - start;
    if (inRoom < target) {
      timedOut = true;
      break;
    }
    await settle();
    const latencies = [];
    for (const conn of probeConns.slice(band * cfg.probes, (band + 1) * cfg.probes)) {
      latencies.push(await conn.join());
      inRoom += 1;
      members.push(conn);
    }
    probes.push({ members: target, ...quantiles(latencies) });
  }
  const cpu = process.cpuUsage(cpuStart);
  await settle();
  // Fill joins by the room's size when they were sent: up to 100, 1,000, 10,000, more.
  const bands = [];
  let low = 0;
  for (const high of [100, 1000, 10000, Infinity]) {
    const ms = fill.filter(([size]) => size >= low && size < high).map(([, v]) => v);
    if (ms.length) bands.push({ from: low, to: high === Infinity ? null : high, ...quantiles(ms) });
    low = high;
  }
  const first = members[0] || { presence: 0, presenceBytes: 0 };
  return {
    protocol: (probeConns[0] || first).protocol,
    members: inRoom,
    fill_joins: fill.length,
    fill_s: fillMs / 1000,
    joins_per_s: fill.length / (fillMs / 1000),
    timed_out: timedOut,
    probes,
    fill_bands: bands,
    connect: quantiles(connectMs),
    first_member_presence_frames: first.presence,
    first_member_presence_bytes: first.presenceBytes,
    presence_frames_total: members.reduce((sum, c) => sum + c.presence, 0),
    presence_bytes_total: members.reduce((sum, c) => sum + c.presenceBytes, 0),
    generator_cpu_s: (cpu.user + cpu.system) / 1e6,
    close: () => Promise.all([...members, ...probeConns].map((c) => c.close())),
  };
}

async function main() {
  if (cfg.mode === "joins") {
    const { close, ...result } = await joins();
    process.stdout.write(JSON.stringify(result) + "\n");
    process.stdin.resume();
    await new Promise((resolve) => process.stdin.on("end", resolve));
    await close();
    process.exit(0);
  }
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
  let senders = clients.slice(0, cfg.senders);
  if (cfg.dedicated_senders) {
    senders = [];
    for (let j = 0; j < cfg.senders; j++) senders.push(await open(cfg.clients + j, false));
  }
  const total = Math.round(cfg.rate * cfg.duration);
  const valueTotal = Math.round((cfg.value_rate || 0) * cfg.duration);
  const cpuStart = process.cpuUsage();
  const start = now();
  let sent = 0;
  let published = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const elapsed = (now() - start) / 1000;
      const due = Math.min(total, Math.floor(elapsed * cfg.rate));
      while (sent < due) {
        const sender = senders[sent % senders.length];
        if (cfg.op === "data") sender.publish(sent);
        else sender.send(sent);
        sent += 1;
      }
      const valuesDue = Math.min(valueTotal, Math.floor(elapsed * (cfg.value_rate || 0)));
      while (published < valuesDue) {
        senders[published % senders.length].publish(published);
        published += 1;
      }
      if (sent >= total && published >= valueTotal) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
  // Split over several generators, each client also receives the others' messages.
  const expected = cfg.total_copies || total * cfg.clients;
  const valueExpected = valueTotal * cfg.clients;
  const deadline = now() + 1000 * (cfg.drain || 3);
  while ((copies < expected || valueCopies < valueExpected) && now() < deadline) {
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
    generator_us_per_copy: copies + valueCopies ? (cpu.user + cpu.system) / (copies + valueCopies) : NaN,
    generator_cpu: (cpu.user + cpu.system) / 1e6 / elapsed,
  };
  if (valueOp) {
    const counts = perClient.map((c) => c.copies);
    result.per_client_min = Math.min(...counts);
    result.per_client_max = Math.max(...counts);
    result.conflated = perClient.reduce((a, c) => a + c.skipped, 0);
  }
  if (mixed) {
    const v = Array.from(valueLatencies.subarray(0, valueLatencyCount)).sort((a, b) => a - b);
    const vpct = (q) => (v.length ? v[Math.min(v.length - 1, Math.floor(q * v.length))] : NaN);
    Object.assign(result, {
      values_sent: valueTotal,
      values_expected: valueExpected,
      values_delivered: valueCopies,
      values_p50_ms: vpct(0.5),
      values_p99_ms: vpct(0.99),
      values_max_ms: v.length ? v[v.length - 1] : NaN,
    });
  }
  process.stdout.write(JSON.stringify(result) + "\n");
  for (const c of clients) c.close();
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
