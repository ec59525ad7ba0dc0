// Live events: a Broker's tail (server-sent events) with a CESQL filter, pause,
// and a detail view. Built to keep up with thousands of events per second:
// rows are added once per animation frame, at most MAX_ROWS are kept, and above
// RENDER_BUDGET events/s only 1 in N is even parsed; the page says so.

import { getJSON, isAbort, postJSON, readStream } from "./api.js";
import { definitions, el, fmtRate, fmtTime, jsonBlock, showDetail, traceEntry } from "./ui.js";

const MAX_ROWS = 200; // rows kept in the table (older ones are removed)
const FRAME_ROWS = 50; // rows added per animation frame at most
const RENDER_BUDGET = 100; // events per second rendered at most; above it, sampling
const MAX_QUEUE = 4 * FRAME_ROWS; // waiting for a frame at most (a background tab has none)
const RETRY_DELAY = 2000; // ms before reconnecting a tail that broke

export class EventsView {
  constructor() {
    this.broker = document.getElementById("tail-broker");
    this.filter = document.getElementById("tail-filter");
    this.error = document.getElementById("tail-error");
    this.state = document.getElementById("tail-state");
    this.rate = document.getElementById("tail-rate");
    this.total = document.getElementById("tail-total");
    this.sampling = document.getElementById("tail-sampling");
    this.rows = document.getElementById("tail-rows");
    this.pauseButton = document.getElementById("tail-pause");
    this.events = new WeakMap(); // row -> event
    this.queue = [];
    this.frame = 0;
    this.received = 0;
    this.second = { received: 0, rendered: 0, dropped: 0 };
    this.sampleEvery = 1;
    this.shownOneIn = 1;
    this.counter = 0;
    this.paused = false;
    this.missed = 0;
    this.abort = null;
    this.retry = 0;

    document.getElementById("tail-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.start();
    });
    this.broker.addEventListener("change", () => this.start());
    this.pauseButton.addEventListener("click", () => this.togglePause());
    document.getElementById("tail-clear").addEventListener("click", () => this.rows.replaceChildren());
    this.rows.addEventListener("click", (event) => {
      const row = event.target.closest("tr");
      if (row && this.events.has(row)) this.detail(this.events.get(row));
    });
  }

  async show() {
    this.ticker = setInterval(() => this.tick(), 1000);
    try {
      const brokers = await getJSON("/api/v1/resources/brokers");
      // Keep the choice across visits; at first, the Broker named "default" if any.
      const names = brokers.items.map((item) => `${item.metadata.namespace}/${item.metadata.name}`);
      const chosen = this.broker.value || names.find((key) => key.endsWith("/default")) || names[0];
      this.broker.replaceChildren(...brokers.items.map((item) => {
        const key = `${item.metadata.namespace}/${item.metadata.name}`;
        return el("option", { value: key, text: key, selected: key === chosen });
      }));
    } catch (error) {
      this.setState(`cannot list Brokers: ${error.message}`);
      return;
    }
    if (!this.broker.value) {
      this.setState("no Broker to tail");
      return;
    }
    this.start();
  }

  hide() {
    clearInterval(this.ticker);
    this.stop();
  }

  stop() {
    clearTimeout(this.retry);
    if (this.abort) this.abort.abort();
    this.abort = null;
  }

  setState(text) {
    this.state.textContent = text;
  }

  async start() {
    this.stop();
    if (!this.broker.value) return;
    this.error.hidden = true;
    const filter = this.filter.value.trim();
    if (filter) {
      // Checked first, so that a typo is shown inline without a failed request.
      const generation = (this.generation = (this.generation || 0) + 1);
      let verdict;
      try {
        verdict = await postJSON("/api/v1/filters/check", { filter });
      } catch (error) {
        verdict = { valid: false, error: error.message };
      }
      if (generation !== this.generation) return; // started again meanwhile
      if (!verdict.valid) {
        this.error.textContent = `invalid filter: ${verdict.error}`;
        this.error.hidden = false;
        this.setState("filter rejected");
        return;
      }
    }
    const [namespace, name] = this.broker.value.split("/");
    const params = new URLSearchParams();
    if (filter) params.set("filter", filter);
    const path = `/api/v1/brokers/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}/events?${params}`;
    const abort = new AbortController();
    this.abort = abort;
    this.setState("connecting…");
    const warn = (text) => {
      this.error.textContent = `warning: ${text}`;
      this.error.hidden = false;
    };
    readStream(path, abort.signal, (data) => this.onData(data), () => {
      this.setState(this.paused ? "paused" : "live");
    }, warn).then(() => {
      if (this.abort === abort) this.reconnect("ended");
    }).catch((error) => {
      if (isAbort(error) || this.abort !== abort) return;
      if (error.status === 400) {
        // The server refused the filter before streaming: show its reason inline.
        this.error.textContent = error.message;
        this.error.hidden = false;
        this.setState("filter rejected");
        return;
      }
      this.reconnect(`disconnected: ${error.message}`);
    });
  }

  reconnect(why) {
    this.setState(`${why}; reconnecting…`);
    this.retry = setTimeout(() => this.start(), RETRY_DELAY);
  }

  togglePause() {
    this.paused = !this.paused;
    this.missed = 0;
    this.pauseButton.textContent = this.paused ? "Resume" : "Pause";
    this.setState(this.paused ? "paused" : "live");
  }

  onData(data) {
    this.received += 1;
    this.second.received += 1;
    if (this.paused) {
      this.missed += 1;
      return;
    }
    this.counter += 1;
    if (this.counter % this.sampleEvery !== 0) return; // sampled out: not even parsed
    this.queue.push(data);
    if (this.queue.length > MAX_QUEUE) {
      this.queue.shift(); // no frame for a while: keep the newest, count it as sampled out
      this.second.dropped += 1;
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const queue = this.queue;
    this.queue = [];
    // More than a frame's worth: keep the newest, count the rest as sampled out.
    const batch = queue.length > FRAME_ROWS ? queue.slice(queue.length - FRAME_ROWS) : queue;
    this.second.dropped += queue.length - batch.length;
    const fragment = document.createDocumentFragment();
    const received = Date.now() / 1000;
    for (let i = batch.length - 1; i >= 0; i -= 1) {
      let event;
      try {
        event = JSON.parse(batch[i]);
      } catch {
        continue;
      }
      const row = el("tr", {},
        el("td", { text: fmtTime(event.time || received) }),
        el("td", { text: event.type }),
        el("td", { text: event.source }),
        el("td", { text: event.subject || "" }),
        el("td", { class: "wide", text: event.id }));
      this.events.set(row, event);
      fragment.append(row);
    }
    this.second.rendered += fragment.childElementCount;
    this.rows.prepend(fragment);
    while (this.rows.childElementCount > MAX_ROWS) this.rows.lastElementChild.remove();
  }

  tick() {
    const { received, rendered, dropped } = this.second;
    this.second = { received: 0, rendered: 0, dropped: 0 };
    this.sampleEvery = Math.max(1, Math.ceil(received / RENDER_BUDGET));
    const shown = dropped > 0 && rendered > 0 ? Math.ceil(received / rendered) : this.sampleEvery;
    this.shownOneIn = this.paused || received === 0 ? 1 : shown;
    this.rate.textContent = fmtRate(received);
    this.total.textContent = `${this.received.toLocaleString()} received`
      + (this.paused && this.missed ? ` · ${this.missed.toLocaleString()} while paused` : "");
    this.sampling.hidden = this.shownOneIn <= 1;
    this.sampling.textContent = `sampling: showing 1 in ${this.shownOneIn}`;
  }

  detail(event) {
    const { data, data_base64: base64, ...attributes } = event;
    showDetail(`${event.type} · ${event.id}`,
      traceEntry(event),
      definitions(Object.entries(attributes)),
      el("h3", { text: "data" }),
      data !== undefined ? jsonBlock(data) : el("pre", { class: "mono", text: base64 || "(none)" }));
  }
}
