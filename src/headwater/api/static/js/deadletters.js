// Dead letters: what Triggers and Subscriptions gave up on, with Knative's
// knativeerror* details, and re-drive (after a confirmation) to the origin's
// current subscriber.

import { Poller, postJSON } from "./api.js";
import { confirmDialog, definitions, el, fmtTime, jsonBlock, showDetail, toast } from "./ui.js";

const REFRESH = 5000;

function originText(origin) {
  return origin ? `${origin.kind} ${origin.namespace}/${origin.name}` : "(unknown)";
}

export class DeadLettersView {
  constructor() {
    this.rows = document.getElementById("dl-rows");
    this.empty = document.getElementById("dl-empty");
    this.poller = new Poller("/api/v1/deadletters?limit=200", REFRESH, (body) => this.render(body.items),
      (error) => toast(`dead letters: ${error.message}`, true));
    document.getElementById("dl-refresh").addEventListener("click", () => this.poller.start());
  }

  show() {
    this.poller.start();
  }

  hide() {
    this.poller.stop();
  }

  render(items) {
    this.empty.hidden = items.length > 0;
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
