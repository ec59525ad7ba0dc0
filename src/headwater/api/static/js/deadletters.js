// Dead letters: what Triggers and Subscriptions gave up on, with Knative's
// knativeerror* details; re-drive (after a confirmation) one, or every one of
// the list (all, or one origin's) as a job whose progress is shown and which
// can be cancelled. These are what describe counts as deadLettered.

import { getJSON, Poller, postJSON } from "./api.js";
import {
  confirmDialog, definitions, el, fmtTime, jsonBlock, showDetail, toast, traceEntry,
} from "./ui.js";

const REFRESH = 5000;
const JOB_REFRESH = 500;

function jobText(job) {
  const remaining = job.remaining === null ? "?" : job.remaining;
  let text = `re-drive ${job.id}: ${job.state} · delivered ${job.delivered} · failed ${job.failed}`
    + ` · remaining ${remaining}`;
  if (job.skipped) text += ` · skipped ${job.skipped}`;
  return job.error ? `${text} (${job.error})` : text;
}

function originText(origin) {
  return origin ? `${origin.kind} ${origin.namespace}/${origin.name}` : "(unknown)";
}

export class DeadLettersView {
  constructor() {
    this.rows = document.getElementById("dl-rows");
    this.empty = document.getElementById("dl-empty");
    this.origin = document.getElementById("dl-origin");
    this.bulk = document.getElementById("dl-redrive-all");
    this.job = document.getElementById("dl-job");
    this.jobText = document.getElementById("dl-job-text");
    this.jobTimer = 0;
    this.running = null;
    this.poller = new Poller(this.path(), REFRESH, (body) => this.render(body.items),
      (error) => toast(`dead letters: ${error.message}`, true));
    document.getElementById("dl-refresh").addEventListener("click", () => this.poller.start());
    this.origin.addEventListener("change", () => this.refilter());
    this.bulk.addEventListener("click", () => this.redriveAll());
    document.getElementById("dl-job-cancel").addEventListener("click", () => this.cancel());
  }

  path() {
    const origin = this.origin.value;
    return `/api/v1/deadletters?limit=200${origin ? `&origin=${encodeURIComponent(origin)}` : ""}`;
  }

  refilter() {
    this.poller.path = this.path();
    this.bulk.textContent = this.origin.value ? "Re-drive these" : "Re-drive all";
    this.poller.start();
  }

  async show(params) {
    await this.loadOrigins(params && params.get("origin"));
    this.refilter();
  }

  hide() {
    this.poller.stop();
  }

  // The Triggers and Subscriptions to filter by (from the topology), keeping the choice.
  async loadOrigins(wanted) {
    const chosen = wanted || this.origin.value;
    let graph = { nodes: [] };
    try {
      graph = await getJSON("/api/v1/topology");
    } catch (error) {
      toast(`dead letters: ${error.message}`, true);
    }
    const routes = graph.nodes.filter((node) => node.role === "route");
    this.origin.replaceChildren(el("option", { value: "", text: "every origin" }),
      ...routes.map((node) => el("option", {
        value: node.id,
        text: `${node.kind} ${node.namespace}/${node.name}`,
      })));
    if (chosen && routes.some((node) => node.id === chosen)) this.origin.value = chosen;
  }

  async redriveAll() {
    const origin = this.origin.value;
    const which = origin ? `every dead letter of ${origin.replace("/", " ")}`
      : "every dead letter";
    const ok = await confirmDialog(`Re-drive ${which}?`,
      "Oldest first, each to its origin's current subscriber, through its retries and dead letter "
        + "sink; those delivered by a re-drive already are left out. One that fails again is kept "
        + "as a new dead letter.", "Re-drive");
    if (!ok) return;
    try {
      this.follow(await postJSON("/api/v1/redrives", origin ? { origin } : { all: true }));
    } catch (error) {
      toast(`re-drive: ${error.message}`, true);
    }
  }

  follow(job) {
    this.running = job;
    this.job.hidden = false;
    this.jobText.textContent = jobText(job);
    this.job.dataset.state = job.state;
    clearTimeout(this.jobTimer);
    if (!job.done) {
      this.jobTimer = setTimeout(async () => {
        try {
          this.follow(await getJSON(`/api/v1/redrives/${job.id}`));
        } catch (error) {
          toast(`re-drive: ${error.message}`, true);
        }
      }, JOB_REFRESH);
      return;
    }
    toast(jobText(job), job.state !== "done" || job.failed > 0);
    this.poller.start();
  }

  async cancel() {
    if (!this.running || this.running.done) return;
    try {
      this.follow(await postJSON(`/api/v1/redrives/${this.running.id}/cancel`));
    } catch (error) {
      toast(`re-drive: ${error.message}`, true);
    }
  }

  render(items) {
    this.empty.hidden = items.length > 0;
    this.bulk.disabled = !items.some((item) => item.redriven !== "delivered");
    this.rows.replaceChildren(...items.map((item) => {
      const delivered = item.redriven === "delivered";
      const button = el("button", {
        type: "button",
        class: "danger",
        disabled: delivered,
        "data-action": "redrive",
        text: "Re-drive",
        onclick: (event) => {
          event.stopPropagation();
          this.redrive(item);
        },
      });
      return el("tr", { "data-id": String(item.id), onclick: () => this.detail(item) },
        el("td", { text: String(item.id) }),
        el("td", {}, button),
        el("td", { text: fmtTime(item.failedAt) }),
        el("td", { text: `${item.event.id} (${item.event.type})` }),
        el("td", { text: originText(item.origin) }),
        el("td", { text: item.destination || "" }),
        el("td", { text: item.code === null ? "-" : String(item.code) }),
        el("td", { class: "wide", text: item.errorText || item.error || "" }),
        el("td", { "data-field": "redriven", text: item.redriven || "" }));
    }));
  }

  detail(item) {
    showDetail(`Dead letter #${item.id}`,
      definitions([
        ["origin", originText(item.origin)],
        ["failed at", item.failedAt],
        ["knativeerrordest", item.destination],
        ["knativeerrorcode", item.code],
        ["knativeerrordata", item.errorText ?? item.errorData],
        ["error", item.error],
        ["re-driven", item.redriven],
        ["data omitted", item.dataOmitted ? "yes (too large to keep)" : null],
      ]),
      traceEntry(item.event),
      el("h3", { text: "event" }),
      jsonBlock(item.event));
  }

  async redrive(item) {
    const ok = await confirmDialog(
      `Re-drive dead letter #${item.id}?`,
      `Event ${item.event.id} (${item.event.type}) will be sent again to the current subscriber of `
        + `${originText(item.origin)}, through its retries and dead letter sink.`,
      "Re-drive",
    );
    if (!ok) return;
    try {
      const result = await postJSON(`/api/v1/deadletters/${item.id}/redrive`);
      const delivered = result.outcome === "delivered";
      toast(`#${item.id}: ${result.outcome}${delivered ? "" : ` (${result.lastError})`}`, !delivered);
    } catch (error) {
      toast(`#${item.id}: ${error.message}`, true);
    }
    this.poller.start();
  }
}
