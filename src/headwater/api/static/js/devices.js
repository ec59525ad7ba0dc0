// Devices: every device of the registry (online or not, last seen) and every
// device seen in events, as cards with their latest values, filtered by name or
// label and by online state. The chosen device shows its twin (desired against
// reported), its last commands with their status and a form to send one, and a
// chart of each numeric field over the last hour (uPlot), kept live by the
// server's once-a-second push of what changed.

import uPlot from "../vendor/uPlot.esm.js";
import { getJSON, isAbort, postJSON, readStream } from "./api.js";
import { el, fmtNumber, fmtTime, toast } from "./ui.js";

const WINDOW = 3600; // seconds shown (the server keeps as much)
const RETRY_DELAY = 2000;
const REGISTRY_INTERVAL = 3000; // presence, twin and commands are polled this often
const COMMAND_WAIT = 10; // seconds one request waits for a command to finish
const FINISHED = new Set(["answered", "failed", "expired"]);
const COLORS = ["#4aa8ff", "#3fb950", "#d29922", "#f85149", "#bc8cff", "#39c5cf", "#ff7b72", "#e3b341"];

function ago(seconds) {
  if (!seconds) return "never";
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s >= 86400) return `${Math.floor(s / 86400)}d ago`;
  if (s >= 3600) return `${Math.floor(s / 3600)}h ago`;
  if (s >= 60) return `${Math.floor(s / 60)}m ago`;
  return `${s}s ago`;
}

function shown(value) {
  return value === undefined ? "—" : typeof value === "string" ? value : JSON.stringify(value);
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

export class DevicesView {
  constructor() {
    this.list = document.getElementById("device-list");
    this.note = document.getElementById("devices-note");
    this.detail = document.getElementById("device-detail");
    this.title = document.getElementById("device-title");
    this.chartsBox = document.getElementById("device-charts");
    this.registryBox = document.getElementById("device-registry");
    this.twinBox = document.getElementById("device-twin");
    this.commandsBox = document.getElementById("device-commands");
    this.form = document.getElementById("command-form");
    this.filter = document.getElementById("device-filter");
    this.state = document.getElementById("device-state");
    this.count = document.getElementById("device-count");
    this.devices = new Map(); // name -> {device, updated, values} (telemetry)
    this.registered = new Map(); // id -> the registry's device, with its presence
    this.selected = null;
    this.charts = new Map(); // field -> {plot, data: [times, values]}
    this.abort = null;
    this.retry = 0;
    this.poll = 0;
    this.resize = () => this.sizeCharts();
    this.filter.addEventListener("input", () => this.renderList());
    this.state.addEventListener("change", () => this.renderList());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendCommand();
    });
  }

  async show() {
    window.addEventListener("resize", this.resize);
    this.ager = setInterval(() => this.renderList(), 5000);
    await Promise.all([this.load(), this.refreshRegistry()]);
    this.listen();
  }

  hide() {
    window.removeEventListener("resize", this.resize);
    clearInterval(this.ager);
    clearTimeout(this.retry);
    clearTimeout(this.poll);
    this.poll = 0;
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  async load() {
    try {
      const body = await getJSON("/api/v1/telemetry");
      this.version = body.version; // the push stream continues from this listing
      this.devices = new Map(body.devices.map((d) => [d.device, d]));
      this.note.hidden = body.untracked === 0;
      this.note.textContent = `${body.untracked} readings from devices over the limit are not shown.`;
      this.renderList();
      if (this.selected && this.devices.has(this.selected)) await this.select(this.selected);
    } catch (error) {
      this.list.replaceChildren(el("p", { class: "error", text: `devices: ${error.message}` }));
    }
  }

  // The registry and the chosen device's twin and commands, now and every few seconds.
  async refreshRegistry() {
    clearTimeout(this.poll);
    try {
      const body = await getJSON("/api/v1/devices?namespace=default&limit=10000");
      this.registered = new Map(body.items.map((d) => [d.id, d]));
      this.renderList();
      if (this.selected && this.registered.has(this.selected)) await this.renderRegistry(this.selected);
    } catch (error) {
      if (!isAbort(error)) console.warn("registry:", error.message);
    }
    this.poll = setTimeout(() => this.refreshRegistry(), REGISTRY_INTERVAL);
  }

  listen() {
    const abort = new AbortController();
    this.abort = abort;
    readStream(`/api/v1/telemetry/events?since=${this.version || 0}`, abort.signal, (data) => this.onChanges(JSON.parse(data)))
      .catch((error) => (isAbort(error) ? null : error))
      .then((error) => {
        if (this.abort !== abort) return;
        if (error) console.warn("devices stream:", error.message);
        this.retry = setTimeout(() => this.load().then(() => this.listen()), RETRY_DELAY);
      });
  }

  onChanges(body) {
    for (const change of body.devices) {
      const known = this.devices.get(change.device);
      this.devices.set(change.device, { ...(known || {}), ...change });
      if (change.device === this.selected) {
        for (const [field, point] of Object.entries(change.points)) this.addPoint(field, point);
      }
    }
    this.renderList();
  }

  // What a card shows: the registry's device and/or its telemetry.
  entries() {
    const names = new Set([...this.registered.keys(), ...this.devices.keys()]);
    const text = this.filter.value.trim().toLowerCase();
    const wanted = this.state.value;
    const out = [];
    for (const name of [...names].sort((a, b) => a.localeCompare(b))) {
      const device = this.registered.get(name);
      const telemetry = this.devices.get(name);
      const online = Boolean(device && device.presence.online);
      if (wanted === "online" && !online) continue;
      if (wanted === "offline" && (online || !device)) continue;
      if (text) {
        const labels = device ? Object.entries(device.labels).map(([k, v]) => `${k}=${v}`) : [];
        if (!name.toLowerCase().includes(text) && !labels.some((l) => l.toLowerCase().includes(text))) continue;
      }
      out.push({ name, device, telemetry, online });
    }
    return out;
  }

  renderList() {
    const entries = this.entries();
    const online = [...this.registered.values()].filter((d) => d.presence.online).length;
    this.count.textContent = `${this.registered.size} registered, ${online} online; ${entries.length} shown`;
    const cards = entries.map(({ name, device, telemetry, online: up }) => {
      let state;
      if (!device) state = el("span", { class: "badge", text: "not registered" });
      else if (up) state = el("span", { class: "badge ok", text: "online" });
      else state = el("span", { class: "badge", text: `offline · seen ${ago(device.presence.lastSeen)}` });
      if (device && !device.enabled) state = el("span", { class: "badge bad", text: "disabled" });
      const values = telemetry ? telemetry.values : {};
      return el("div", {
        class: `card${name === this.selected ? " selected" : ""}`,
        "data-device": name,
        "data-online": up ? "true" : "false",
        tabindex: "0",
        onclick: () => this.select(name),
        onkeydown: (event) => { if (event.key === "Enter") this.select(name); },
      },
      el("h3", { text: name }),
      state,
      el("dl", {}, ...Object.entries(values).flatMap(([field, value]) => [
        el("dt", { text: field }), el("dd", { text: fmtNumber(value) }),
      ])),
      telemetry ? el("div", { class: "ago", text: `updated ${fmtTime(telemetry.updated)} (${ago(telemetry.updated)})` }) : null);
    });
    const empty = this.registered.size || this.devices.size ? "No device matches." : "No devices yet: register some (headwater device add) or send readings.";
    this.list.replaceChildren(...(cards.length ? cards : [el("p", { class: "hint", text: empty })]));
  }

  async select(name) {
    this.selected = name;
    this.renderList();
    this.title.textContent = name;
    this.detail.hidden = false;
    const registered = this.registered.has(name);
    this.registryBox.hidden = !registered;
    if (registered) await this.renderRegistry(name);
    await this.renderCharts(name);
  }

  async renderRegistry(name) {
    const path = `/api/v1/devices/${encodeURIComponent(name)}`;
    let twin;
    let commands;
    try {
      [twin, commands] = await Promise.all([getJSON(`${path}/twin`), getJSON(`${path}/commands?limit=10`)]);
    } catch (error) {
      this.twinBox.replaceChildren(el("p", { class: "error", text: error.message }));
      return;
    }
    if (this.selected !== name) return;
    const desired = twin.desired.state;
    const reported = twin.reported.state;
    const members = [...new Set([...Object.keys(desired), ...Object.keys(reported)])].sort();
    const rows = members.map((member) => {
      const pending = member in twin.delta;
      return el("tr", { class: pending ? "pending" : "", "data-member": member },
        el("td", { text: member }),
        el("td", { text: shown(desired[member]) }),
        el("td", { text: shown(reported[member]) }),
        el("td", { text: pending ? "pending" : (member in desired && same(desired[member], reported[member]) ? "in sync" : "") }));
    });
    this.twinBox.replaceChildren(
      el("p", { class: "status-line", text: `desired v${twin.desired.version} · reported v${twin.reported.version}` }),
      rows.length
        ? el("table", { class: "twin" },
          el("thead", {}, el("tr", {}, ...["member", "desired", "reported", ""].map((h) => el("th", { text: h })))),
          el("tbody", {}, ...rows))
        : el("p", { class: "hint", text: "No desired or reported state yet (headwater device twin ... --set)." }));
    const items = commands.items.map((c) => el("tr", { "data-command": c.id, "data-status": c.status },
      el("td", { class: "mono", text: c.id }),
      el("td", {}, el("span", { class: `badge ${c.status === "answered" ? "ok" : FINISHED.has(c.status) ? "bad" : ""}`, text: c.status })),
      el("td", { text: fmtTime(c.created) }),
      el("td", { class: "wide mono", text: c.response ? shown(c.response.data ?? c.response.dataBase64) : (c.reason || "") })));
    this.commandsBox.replaceChildren(items.length
      ? el("table", { class: "commands" },
        el("thead", {}, el("tr", {}, ...["command", "status", "created", "answer"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...items))
      : el("p", { class: "hint", text: "No commands yet." }));
  }

  async sendCommand() {
    const name = this.selected;
    if (!name) return;
    const text = document.getElementById("command-data").value.trim();
    let data;
    let contentType;
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
      contentType = "text/plain";
    }
    const expiry = Number(document.getElementById("command-expiry").value) || 60;
    const path = `/api/v1/devices/${encodeURIComponent(name)}/commands`;
    let command;
    try {
      command = await postJSON(path, { data, expiry, ...(contentType ? { contentType } : {}) });
    } catch (error) {
      toast(`command: ${error.message}`, true);
      return;
    }
    toast(`command ${command.id} ${command.status}`);
    await this.renderRegistry(name);
    while (!FINISHED.has(command.status) && this.selected === name) {
      try {
        command = await getJSON(`${path}/${command.id}?wait=${COMMAND_WAIT}`);
      } catch (error) {
        toast(`command ${command.id}: ${error.message}`, true);
        return;
      }
      if (this.selected === name) await this.renderRegistry(name);
    }
    if (FINISHED.has(command.status)) toast(`command ${command.id} ${command.status}`, command.status !== "answered");
  }

  async renderCharts(name) {
    for (const { plot } of this.charts.values()) plot.destroy();
    this.charts.clear();
    this.chartsBox.replaceChildren();
    if (!this.devices.has(name)) {
      this.chartsBox.replaceChildren(el("p", { class: "hint", text: "No numeric readings from it in the last hour." }));
      return;
    }
    let body;
    try {
      body = await getJSON(`/api/v1/telemetry/series?device=${encodeURIComponent(name)}`);
    } catch (error) {
      this.chartsBox.replaceChildren(el("p", { class: "error", text: error.message }));
      return;
    }
    if (this.selected !== name) return;
    Object.entries(body.series).forEach(([field, series], index) => {
      const box = el("div", { class: "chart", "data-field": field });
      this.chartsBox.append(box);
      const data = [series.t.slice(), series.v.slice()];
      const plot = new uPlot({
        title: field,
        width: Math.max(200, box.clientWidth - 16),
        height: 180,
        scales: { x: { time: true } },
        axes: [
          { stroke: "#8a98a8", grid: { stroke: "#2a3541" }, ticks: { stroke: "#2a3541" } },
          { stroke: "#8a98a8", grid: { stroke: "#2a3541" }, ticks: { stroke: "#2a3541" } },
        ],
        series: [{}, { label: field, stroke: COLORS[index % COLORS.length], width: 2, points: { size: 4 } }],
      }, data, box);
      this.charts.set(field, { plot, data });
    });
  }

  addPoint(field, [t, v]) {
    const chart = this.charts.get(field);
    if (!chart) return;
    const [times, values] = chart.data;
    if (times.length && times[times.length - 1] === t) {
      values[values.length - 1] = v; // the same bucket: its latest value
    } else if (!times.length || t > times[times.length - 1]) {
      times.push(t);
      values.push(v);
      while (times.length && times[0] < t - WINDOW) {
        times.shift();
        values.shift();
      }
    }
    chart.plot.setData(chart.data);
  }

  sizeCharts() {
    for (const { plot } of this.charts.values()) {
      const box = plot.root.parentElement;
      plot.setSize({ width: Math.max(200, box.clientWidth - 16), height: 180 });
    }
  }
}
