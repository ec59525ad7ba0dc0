// Devices: latest values per device (cards) and, for the chosen device, a chart
// of each numeric field over the last hour (uPlot), kept live by the server's
// once-a-second push of what changed.

import uPlot from "../vendor/uPlot.esm.js";
import { getJSON, isAbort, readStream } from "./api.js";
import { el, fmtNumber, fmtTime } from "./ui.js";

const WINDOW = 3600; // seconds shown (the server keeps as much)
const RETRY_DELAY = 2000;
const COLORS = ["#4aa8ff", "#3fb950", "#d29922", "#f85149", "#bc8cff", "#39c5cf", "#ff7b72", "#e3b341"];

export class DevicesView {
  constructor() {
    this.list = document.getElementById("device-list");
    this.note = document.getElementById("devices-note");
    this.detail = document.getElementById("device-detail");
    this.title = document.getElementById("device-title");
    this.chartsBox = document.getElementById("device-charts");
    this.devices = new Map(); // name -> {device, updated, values}
    this.selected = null;
    this.charts = new Map(); // field -> {plot, data: [times, values]}
    this.abort = null;
    this.retry = 0;
    this.resize = () => this.sizeCharts();
  }

  async show() {
    window.addEventListener("resize", this.resize);
    this.ager = setInterval(() => this.renderList(), 5000);
    await this.load();
    this.listen();
  }

  hide() {
    window.removeEventListener("resize", this.resize);
    clearInterval(this.ager);
    clearTimeout(this.retry);
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  async load() {
    try {
      const body = await getJSON("/api/v1/devices");
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

  listen() {
    const abort = new AbortController();
    this.abort = abort;
    readStream(`/api/v1/devices/events?since=${this.version || 0}`, abort.signal, (data) => this.onChanges(JSON.parse(data)))
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

  renderList() {
    const now = Date.now() / 1000;
    const cards = [...this.devices.values()]
      .sort((a, b) => a.device.localeCompare(b.device))
      .map((d) => el("div", {
        class: `card${d.device === this.selected ? " selected" : ""}`,
        "data-device": d.device,
        tabindex: "0",
        onclick: () => this.select(d.device),
        onkeydown: (event) => { if (event.key === "Enter") this.select(d.device); },
      },
      el("h3", { text: d.device }),
      el("dl", {}, ...Object.entries(d.values).flatMap(([field, value]) => [
        el("dt", { text: field }), el("dd", { text: fmtNumber(value) }),
      ])),
      el("div", { class: "ago", text: `updated ${fmtTime(d.updated)} (${Math.max(0, Math.round(now - d.updated))}s ago)` })));
    this.list.replaceChildren(...(cards.length ? cards : [el("p", { class: "hint", text: "No device readings in the last hour yet." })]));
  }

  async select(name) {
    this.selected = name;
    this.renderList();
    let body;
    try {
      body = await getJSON(`/api/v1/devices/series?device=${encodeURIComponent(name)}`);
    } catch (error) {
      this.chartsBox.replaceChildren(el("p", { class: "error", text: error.message }));
      return;
    }
    if (this.selected !== name) return;
    for (const { plot } of this.charts.values()) plot.destroy();
    this.charts.clear();
    this.chartsBox.replaceChildren();
    this.title.textContent = `${name}: last hour`;
    this.detail.hidden = false;
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
