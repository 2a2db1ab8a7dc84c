// The OBS overlay: state arrives over /ws as JSON messages ("now", "queue", "top", "notes"); clocks tick here.
// Text from chat only ever goes into textContent, never into HTML.
"use strict";

const QUEUE_ROWS = 5;
const TOP_ROWS = 6;
const ROLL_PAST = 7; // seconds of notes left of the "now" line
const ROLL_AHEAD = 1.5; // seconds right of it (notes are generated a little ahead of playback)
const MAX_NOTES = 4000;
const PERIOD_NAMES = { stream: "this stream", week: "this week", all: "all time" };
// General MIDI programs of the instrument names chat uses, to colour their chips like their notes.
const PROGRAMS = {
  piano: 0, harpsichord: 6, organ: 19, guitar: 24, violin: 40, viola: 41, cello: 42, contrabass: 43, harp: 46,
  strings: 48, choir: 52, trumpet: 56, trombone: 57, tuba: 58, horn: 60, oboe: 68, bassoon: 70, clarinet: 71,
  flute: 73, recorder: 74, drums: -1,
};
// Hues a golden angle apart for successive programs: the few instruments of one piece (violin, viola, cello,
// contrabass are programs 40-43) always get clearly different colours.
const GOLDEN_ANGLE = 137.508;

const $ = (id) => document.getElementById(id);
const body = document.body;

const state = {
  now: null, // the last "now" message's piece, or null
  nowAt: 0, // performance.now() when it arrived
  ticking: true,
  queue: [],
  queueAt: 0,
  plan: null, // the piece's plan (sections, phrases, cadence times), or null
  notes: [], // {pitch, program, start, duration} of the piece playing
  shownSecond: -1,
  shownSection: -1,
  steerVotes: [], // open steering votes: {steer, votes, needed, closes_at (unix seconds)}
  steers: [], // steers that passed: {steer, at (seconds into the piece, null until it lands)}
  shownSteers: "",
};

// Formatting

function bars(n) {
  return n === 1 ? "1 bar" : `${n} bars`;
}

// Where `t` seconds fall in a plan (bot.concert_view.plan_summary): the section playing, and how far the next
// cadence is. A phrase's cadence is the downbeat of its last bar; that bar is "cadence now".
function planAt(plan, t) {
  const bar = plan.bar_seconds;
  const eps = 1e-6;
  let section = 0;
  plan.sections.forEach((s, i) => {
    if (t >= s.start * bar - eps) section = i;
  });
  const phrases = plan.phrases;
  let cadence = "";
  for (let i = 0; i < phrases.length; i++) {
    const at = phrases[i].cadence_at;
    const final = i === phrases.length - 1;
    const name = final ? "final cadence" : "cadence";
    if (t < at - eps) {
      cadence = `${name} in ${bars(Math.max(1, Math.ceil((at - t) / bar - eps)))}`;
      break;
    }
    if (final || t < at + bar - eps) {
      cadence = final ? name : `${name} now`;
      break;
    }
  }
  return { section, cadence };
}

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function pretty(name) {
  const words = String(name).replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function counted(names) {
  const counts = new Map();
  for (const name of names) counts.set(name, (counts.get(name) || 0) + 1);
  return [...counts].map(([name, n]) => ({ name, n }));
}

function instrumentsText(names) {
  return counted(names).map(({ name, n }) => (n > 1 ? `${n}× ${name}` : name)).join(", ");
}

function colour(program, light = 64) {
  if (program < 0) return `hsl(45, 15%, ${light + 16}%)`; // drums: near white
  const hue = (265 + program * GOLDEN_ANGLE) % 360; // piano (0) in the overlay's violet
  return `hsl(${hue.toFixed(1)}, 85%, ${light}%)`;
}

function setText(node, text) {
  const value = String(text);
  if (node.textContent !== value) node.textContent = value; // most frames change nothing: touch no DOM
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Now playing

function elapsed() {
  if (!state.now) return 0;
  const since = state.ticking ? (performance.now() - state.nowAt) / 1000 : 0;
  return Math.min(state.now.elapsed + since, Math.max(state.now.seconds, state.now.elapsed));
}

function showNow(message) {
  const now = message.now;
  const panel = $("now");
  const changed = !now || !state.now || now.seed !== state.now.seed;
  const votesBefore = state.now ? state.now.votes : null;
  state.now = now;
  state.nowAt = performance.now();
  state.ticking = message.ticking !== false;
  panel.dataset.ticking = state.ticking ? "1" : "0";
  $("now-status").textContent = state.ticking ? "Now playing" : "Paused";
  if (!now) {
    panel.dataset.state = "idle";
    state.notes = [];
    showIdle();
    return;
  }
  panel.dataset.state = "playing";
  if (changed) {
    state.notes = state.notes.filter((note) => note.seed === now.seed);
    $("now-seed").textContent = now.seed;
    $("now-style").textContent = pretty(now.style);
    $("now-title").textContent = now.title || ""; // pieces made before titles have none
    const chips = counted(now.instruments).map(({ name, n }) => {
      const chip = el("li");
      const dot = el("i");
      if (name in PROGRAMS) dot.style.background = colour(PROGRAMS[name]);
      chip.append(dot, n > 1 ? `${n}× ${name}` : name);
      return chip;
    });
    $("now-instruments").replaceChildren(...chips);
    const who = $("now-requester");
    who.replaceChildren(...(now.requester ? ["requested by ", el("b", "", now.requester)] : ["chosen by the bot"]));
    $("now-tempo").textContent = `${Math.round(now.tempo)} bpm`;
    $("now-length").textContent = clock(now.seconds);
    state.shownSecond = -1;
  }
  if (changed || JSON.stringify(now.plan) !== JSON.stringify(state.plan)) showPlan(now.plan);
  $("now-votes").textContent = now.votes;
  $("now-votes-label").textContent = now.votes === 1 ? "vote" : "votes";
  if (!changed && votesBefore !== null && now.votes > votesBefore) {
    const box = $("now-votes-box");
    box.classList.remove("bump");
    void box.offsetWidth; // restart the animation
    box.classList.add("bump");
  }
  state.steerVotes = now ? now.steer_votes || [] : [];
  state.steers = now ? now.steers || [] : [];
  tickNow();
}

// Chat steering the piece: open votes count down here (to unix times); a passed steer shows "next bar" until it
// lands, then "landed" for a few seconds of the piece.
const LANDED_SHOWN = 8;

function steerChips(t) {
  const chips = [];
  for (const vote of state.steerVotes || []) {
    const left = Math.max(0, Math.ceil(vote.closes_at - Date.now() / 1000));
    chips.push(["vote", `${vote.steer} ${vote.votes}/${vote.needed} · ${left} s`]);
  }
  for (const steer of state.steers || []) {
    if (steer.at === null || t < steer.at) chips.push(["coming", `${steer.steer} · next bar`]);
    else if (t - steer.at < LANDED_SHOWN) chips.push(["landed", `${steer.steer} · landed`]);
  }
  return chips;
}

function tickSteers(t) {
  const chips = steerChips(t);
  const key = JSON.stringify(chips);
  if (key === state.shownSteers) return;
  state.shownSteers = key;
  $("now-steers").replaceChildren(...chips.map(([kind, text]) => el("li", kind, text)));
}

function showPlan(plan) {
  state.plan = plan || null;
  state.shownSection = -1;
  $("now").dataset.plan = state.plan ? "1" : "0";
  const letters = state.plan ? state.plan.sections.map((s) => el("b", "", s.label)) : [];
  $("now-sections").replaceChildren(...letters);
  $("now-cadence").textContent = "";
}

function tickPlan(t) {
  const { section, cadence } = planAt(state.plan, t);
  if (section !== state.shownSection) {
    const letters = $("now-sections").children;
    if (letters[state.shownSection]) letters[state.shownSection].classList.remove("current");
    if (letters[section]) letters[section].classList.add("current");
    state.shownSection = section;
  }
  setText($("now-cadence"), cadence);
}

function tickNow() {
  if (!state.now) return;
  const t = elapsed();
  const second = Math.floor(t);
  if (second !== state.shownSecond) {
    state.shownSecond = second;
    setText($("now-elapsed"), clock(t));
  }
  if (state.plan) tickPlan(t);
  tickSteers(t);
  const share = state.now.seconds > 0 ? Math.min(1, t / state.now.seconds) : 0;
  $("now-bar").style.width = `${(share * 100).toFixed(2)}%`;
}

// Queue and leaderboard

function keyed(list, rows, keyOf, render) {
  // Rebuild the rows, animating only the entries that were not there before.
  const before = new Set([...list.children].map((row) => row.dataset.key));
  const seen = new Map();
  const items = rows.map((row) => {
    const base = keyOf(row);
    const n = (seen.get(base) || 0) + 1;
    seen.set(base, n);
    const item = render(row);
    item.dataset.key = `${base}#${n}`;
    if (before.size && !before.has(item.dataset.key)) item.classList.add("enter");
    return item;
  });
  list.replaceChildren(...items);
}

// Between two pieces the next one is already known: the queue's first row (position 0 once the conductor has
// taken it to compose). Say what comes; "The stage is quiet" only when nothing does.
function showIdle() {
  const next = state.queue[0];
  const what = next ? `${pretty(next.style)} for ${instrumentsText(next.instruments)}` : "";
  setText($("idle-title"), next ? `Next: ${what}` : "The stage is quiet");
  $("idle-hint").hidden = Boolean(next);
  const line = $("idle-next");
  line.hidden = !next;
  if (next) {
    const who = next.requester ? `requested by ${next.requester}` : "chosen by the bot";
    setText(line, `${who} · ${next.position === 0 ? "composing the next piece" : "starting soon"}`);
  }
}

function showQueue(message) {
  state.queue = message.queue;
  state.queueAt = performance.now();
  const total = message.queue.length;
  $("queue-count").textContent = total ? `${total} waiting` : "";
  keyed(
    $("queue-list"),
    message.queue.slice(0, QUEUE_ROWS),
    (q) => [q.requester, q.style, q.instruments.join("+"), q.replay_seed].join("|"),
    (q) => {
      const item = el("li");
      const what = el("span", "what");
      const title = q.replay_seed ? `${pretty(q.style)} · replay` : pretty(q.style);
      const who = q.requester || "the bot";
      what.append(el("span", "title", title), el("span", "sub", `${who} · ${instrumentsText(q.instruments)}`));
      const side = el("span", "side eta");
      side.dataset.eta = q.eta_seconds;
      item.append(el("span", "pos", q.position === 0 ? "▸" : q.position), what, side);
      return item;
    },
  );
  showIdle();
  tickQueue();
}

function tickQueue() {
  const since = (performance.now() - state.queueAt) / 1000;
  for (const side of $("queue-list").querySelectorAll(".eta")) {
    const left = Number(side.dataset.eta) - since;
    setText(side, left > 1 ? `in ${clock(left)}` : "next");
  }
}

function showTop(message) {
  $("top-title").textContent = "Top pieces";
  $("top-period").textContent = PERIOD_NAMES[message.period] || "";
  keyed(
    $("top-list"),
    message.top.slice(0, TOP_ROWS),
    (row) => row.seed,
    (row) => {
      const item = el("li");
      const what = el("span", "what");
      const who = row.requester || "the bot";
      what.append(el("span", "title", pretty(row.style)), el("span", "sub", `${who} · ${instrumentsText(row.instruments)}`));
      const side = el("span", "side", `▲ ${row.votes}`);
      side.append(el("small", "", `#${row.seed}`));
      item.append(el("span", "pos", row.rank), what, side);
      return item;
    },
  );
}

// Piano roll

function addNotes(message) {
  const seed = message.seed || (state.now && state.now.seed);
  if (state.now && seed !== state.now.seed) return; // late notes of a piece that has ended
  for (const note of message.notes) state.notes.push({ ...note, seed });
  if (state.notes.length > MAX_NOTES) state.notes.splice(0, state.notes.length - MAX_NOTES);
}

const roll = { canvas: $("roll-canvas"), low: 48, high: 84, drawn: 0 };

function remPixels() {
  return parseFloat(getComputedStyle(document.documentElement).fontSize) || 16;
}

function drawRoll() {
  const canvas = roll.canvas;
  const ratio = window.devicePixelRatio || 1;
  const width = Math.round(canvas.clientWidth * ratio);
  const height = Math.round(canvas.clientHeight * ratio);
  if (!width || !height) return;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, width, height);
  const t = elapsed();
  const nowX = width * (ROLL_PAST / (ROLL_PAST + ROLL_AHEAD));
  const perSecond = nowX / ROLL_PAST;
  const visible = state.notes.filter((n) => n.start + n.duration > t - ROLL_PAST && n.start < t + ROLL_AHEAD);
  state.notes = state.notes.filter((n) => n.start + n.duration > t - ROLL_PAST - 1);

  // Follow the range of pitches heard, smoothly, never narrower than two octaves.
  if (visible.length) {
    let low = Math.min(...visible.map((n) => n.pitch)) - 2;
    let high = Math.max(...visible.map((n) => n.pitch)) + 2;
    if (high - low < 24) {
      const mid = (low + high) / 2;
      low = mid - 12;
      high = mid + 12;
    }
    roll.low += (low - roll.low) * 0.05;
    roll.high += (high - roll.high) * 0.05;
  }
  const pad = height * 0.1;
  const row = (height - 2 * pad) / (roll.high - roll.low + 1);
  const y = (pitch) => height - pad - (pitch - roll.low + 1) * row;

  // Octave lines at every C.
  const octaves = [];
  for (let c = Math.ceil(roll.low / 12) * 12; c <= roll.high; c += 12) octaves.push(c);
  ctx.lineWidth = Math.max(1, ratio);
  ctx.strokeStyle = "rgba(255, 255, 255, 0.08)";
  for (const c of octaves) {
    ctx.beginPath();
    ctx.moveTo(0, y(c) + row);
    ctx.lineTo(width, y(c) + row);
    ctx.stroke();
  }

  // A note is at least a third of a rem thick, so that wide ranges still read as notes, not hairlines.
  const thickness = Math.max(row * 0.85, remPixels() * 0.34 * ratio);
  const radius = Math.min(thickness * 0.45, 6 * ratio);
  let drawn = 0;
  for (const note of visible) {
    const x0 = nowX + (note.start - t) * perSecond;
    const x1 = nowX + (note.start + note.duration - t) * perSecond;
    const sounding = note.start <= t && t < note.start + note.duration;
    const ahead = note.start > t;
    ctx.globalAlpha = ahead ? 0.35 : sounding ? 1 : 0.8;
    ctx.fillStyle = colour(note.program, sounding ? 72 : 60);
    ctx.shadowColor = sounding ? colour(note.program, 60) : "transparent";
    ctx.shadowBlur = sounding ? 14 * ratio : 0;
    const w = Math.max(x1 - x0 - ratio, 2 * ratio);
    const top = y(note.pitch) + (row - thickness) / 2;
    ctx.beginPath();
    if (ctx.roundRect) ctx.roundRect(x0, top, w, thickness, radius);
    else ctx.rect(x0, top, w, thickness); // Chromium before 99 (older OBS)
    ctx.fill();
    drawn += 1;
  }
  ctx.globalAlpha = 1;
  ctx.shadowBlur = 0;

  // The "now" line, brightest in the middle.
  const line = ctx.createLinearGradient(0, 0, 0, height);
  line.addColorStop(0, "rgba(34, 211, 238, 0)");
  line.addColorStop(0.5, "rgba(34, 211, 238, 0.9)");
  line.addColorStop(1, "rgba(34, 211, 238, 0)");
  ctx.fillStyle = line;
  ctx.fillRect(nowX - ratio, 0, 2 * ratio, height);

  // Fade the oldest notes out towards the left edge.
  ctx.globalCompositeOperation = "destination-out";
  const fade = ctx.createLinearGradient(0, 0, width * 0.25, 0);
  fade.addColorStop(0, "rgba(0, 0, 0, 1)");
  fade.addColorStop(1, "rgba(0, 0, 0, 0)");
  ctx.fillStyle = fade;
  ctx.fillRect(0, 0, width * 0.25, height);
  ctx.globalCompositeOperation = "source-over";

  ctx.fillStyle = "rgba(255, 255, 255, 0.35)";
  ctx.font = `${Math.round(remPixels() * 0.62 * ratio)}px sans-serif`;
  for (const c of octaves) ctx.fillText(`C${c / 12 - 1}`, 10 * ratio, y(c) + row - 4 * ratio);
  roll.drawn = drawn;
}

// Audio (?audio=1): a live stream that stops (a restart, a network blip) is reopened, and one that drifts
// more than a few seconds behind (after a stall) jumps back to the newest audio it has.

function keepAudioLive(audio) {
  let retry = null;
  const reopen = () => {
    if (retry) return;
    retry = setTimeout(() => {
      retry = null;
      audio.src = `/stream.mp3?t=${Date.now()}`;
      audio.load();
    }, 2000);
  };
  audio.addEventListener("canplay", () => audio.play().catch(() => {}));
  audio.addEventListener("error", reopen);
  audio.addEventListener("ended", reopen);
  setInterval(() => {
    const buffered = audio.buffered;
    if (buffered.length && buffered.end(buffered.length - 1) - audio.currentTime > 5) {
      audio.currentTime = buffered.end(buffered.length - 1) - 1.5;
    }
  }, 5000);
}

// Connection

const handlers = { now: showNow, queue: showQueue, top: showTop, notes: addNotes };

function connect(delay = 500) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const period = encodeURIComponent(body.dataset.period || "stream");
  const ws = new WebSocket(`${scheme}//${location.host}/ws?period=${period}`);
  let heard = false; // a socket that opens and fails before its first message counts as a failure
  ws.onmessage = (event) => {
    if (!heard) {
      heard = true;
      body.dataset.live = "1";
    }
    const message = JSON.parse(event.data);
    const handler = handlers[message.type];
    if (handler) handler(message);
  };
  ws.onclose = () => {
    body.dataset.live = "0";
    // Keep showing the last state while the server is away (a restart): viewers see no blank flash.
    const next = heard ? 500 : Math.min(delay * 2, 5000);
    setTimeout(() => connect(next), next);
  };
}

function frame() {
  tickNow();
  tickQueue();
  if (body.dataset.panels.split(" ").includes("roll")) drawRoll();
  requestAnimationFrame(frame);
}

// OBS's browser source defines window.obsstudio: there the link to the local chat would be on stream.
const chatLink = $("chat-link");
if (chatLink && !window.obsstudio) chatLink.hidden = false;

const audio = $("audio");
if (audio) keepAudioLive(audio);
connect();
requestAnimationFrame(frame);
