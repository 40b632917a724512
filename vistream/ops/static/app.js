// The status page: polls the daemon's JSON every couple of seconds and loads a camera's picture only
// when a newer frame has been inferred (its seq changed). No framework, nothing from outside.
"use strict";

const REFRESH_MS = 2000;
const DROP_REASONS = ["stale", "overwritten", "failed", "unattached", "reshape", "backend"];
let pictures = true; // false: the daemon serves no pictures (metrics.pictures), so no <img> at all
const tiles = new Map(); // camera name -> {root, fields, img, seq, loading}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

async function getJSON(path) {
  const resp = await fetch(path, { cache: "no-store" });
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

function num(value, digits = 1) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

function makeTile(name) {
  const fields = {};
  const stat = (key, label, cls) => {
    fields[key] = el("b", {}, "–");
    return el("div", cls ? { class: cls } : {}, el("span", {}, label), fields[key]);
  };
  fields.state = el("span", { class: "pill state" }, "…");
  fields.size = el("span", { class: "size muted" });
  const img = pictures ? el("img", { alt: `latest frame of ${name}` }) : null;
  const root = el(
    "article",
    { class: "tile", "data-camera": name },
    el("div", { class: "tile-head" }, el("h2", { class: "name" }, name), fields.state, fields.size),
    pictures
      ? el("div", { class: "frame" }, img, el("div", { class: "placeholder" }, "no frame inferred yet"))
      : el("div", { class: "muted" }, "pictures are off (metrics.pictures)"),
    el(
      "div",
      { class: "stats" },
      stat("fps_in", "decoded/s"),
      stat("fps_inferred", "inferred/s"),
      stat("age", "last frame"),
      stat("reconnects", "reconnects"),
      stat("dropped", "dropped", "wide"),
      stat("objects", "in the latest frame", "wide"),
    ),
  );
  return { root, fields, img, seq: null, loading: false };
}

function updateTile(tile, cam) {
  const f = tile.fields;
  f.state.textContent = cam.online ? "online" : `offline · ${cam.state}`;
  f.state.className = `pill state ${cam.online ? "ok" : cam.state === "streaming" ? "warn" : "bad"}`;
  f.size.textContent = cam.width ? `${cam.width}×${cam.height}` : "";
  f.fps_in.textContent = num(cam.fps_in);
  f.fps_inferred.textContent = `${num(cam.fps_inferred)} of ${num(cam.detect_fps, 0)}`;
  f.age.textContent = cam.last_frame_age_s === null ? "never" : `${num(cam.last_frame_age_s)} s ago`;
  f.reconnects.textContent = String(cam.reconnects);
  f.dropped.textContent = DROP_REASONS.map((r) => `${r} ${cam.dropped[r] ?? 0}`).join(" · ");
  const objects = cam.frame ? Object.entries(cam.frame.objects) : [];
  f.objects.textContent = cam.frame
    ? objects.length ? objects.map(([label, n]) => `${n} ${label}`).join(", ") : "nothing detected"
    : "–";
  if (tile.img && cam.frame && cam.frame.seq !== tile.seq && !tile.loading) loadPicture(tile, cam.name, cam.frame.seq);
}

// Load the next picture off-screen and swap it in once decoded, so the tile never flickers.
function loadPicture(tile, name, seq) {
  tile.loading = true;
  const next = new Image();
  const url = `api/cameras/${encodeURIComponent(name)}/latest.jpg?seq=${seq}`;
  next.onload = () => {
    tile.img.src = url;
    tile.seq = seq;
    tile.loading = false;
  };
  next.onerror = () => {
    tile.loading = false;
  };
  next.src = url;
}

function updateCameras(cameras) {
  const grid = document.getElementById("cameras");
  const seen = new Set();
  for (const cam of cameras) {
    seen.add(cam.name);
    let tile = tiles.get(cam.name);
    if (!tile) {
      tile = makeTile(cam.name);
      tiles.set(cam.name, tile);
    }
    grid.append(tile.root); // in the daemon's order; appending an existing node moves it
    updateTile(tile, cam);
  }
  for (const [name, tile] of tiles) {
    if (!seen.has(name)) {
      tile.root.remove();
      tiles.delete(name);
    }
  }
}

function updateStatus(status) {
  pictures = status.pictures !== false;
  const health = document.getElementById("health");
  health.textContent = status.healthy ? "healthy" : status.reason;
  health.className = `pill ${status.healthy ? "ok" : "bad"}`;
  const model = status.device ? `model on ${status.device}${status.half ? " fp16" : ""}` : "model loading";
  const mqtt = status.mqtt_connected ? "MQTT connected" : "MQTT disconnected";
  document.getElementById("summary").textContent =
    `${status.cameras_online}/${status.cameras} cameras online · ${model} · ${mqtt}`;
}

function updateEvents(events) {
  const body = document.querySelector("#events tbody");
  body.replaceChildren(
    ...events.map((ev) => {
      const where = ev.line ? `${ev.line} (${ev.direction})` : ev.zone ?? "whole frame";
      const object = ev.track_id === null ? ev.label : `${ev.label} #${ev.track_id}`;
      const count = ev.count > 1 ? ` ×${ev.count}` : "";
      return el(
        "tr",
        { class: ev.type },
        el("td", {}, ev.camera),
        el("td", {}, ev.rule),
        el("td", {}, ev.type),
        el("td", {}, object + count),
        el("td", {}, where),
        el("td", {}, `${Math.round(ev.max_confidence * 100)}%`),
        el("td", {}, clock(ev.started_at)),
        el("td", {}, ev.ended_at ? clock(ev.ended_at) : "–"),
      );
    }),
  );
  document.getElementById("events").hidden = events.length === 0;
  document.getElementById("no-events").hidden = events.length > 0;
}

async function refresh() {
  const updated = document.getElementById("updated");
  try {
    const [status, cameras, events] = await Promise.all([
      getJSON("api/status"),
      getJSON("api/cameras"),
      getJSON("api/events"),
    ]);
    updateStatus(status);
    updateCameras(cameras);
    updateEvents(events);
    updated.textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
  } catch (err) {
    updated.textContent = `cannot reach the daemon: ${err.message}`;
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
