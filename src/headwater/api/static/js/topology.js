// Topology: sources -> Brokers/Channels -> Triggers/Subscriptions -> sinks, from
// GET /api/v1/topology every few seconds. Rates come from the difference of two
// snapshots; a route whose failure counters grew since the last one is "failing".
// A route shows its last error (when, which attempt) from its first failed
// attempt on, and its dead letters link to the dead letters view of that origin.

import { Poller } from "./api.js";
import { el, fmtNumber, fmtRate, fmtTime } from "./ui.js";

const REFRESH = 2000;
const SVG_NS = "http://www.w3.org/2000/svg"; // a namespace name, not fetched
const COLUMNS = [
  ["source", "Sources"],
  ["channel", "Brokers & Channels"],
  ["route", "Triggers & Subscriptions"],
  ["sink", "Sinks"],
];
// The counter whose rate is shown, by role: the first one a node has.
const RATE_COUNTERS = {
  source: ["sent", "accepted", "published", "messages", "received"],
  channel: ["accepted"],
  route: ["delivered"],
  sink: ["received", "written", "delivered", "published", "points"],
};
const HIDDEN_COUNTERS = new Set(["maxInflight", "pending", "inFlight"]);
// A route's counters, in the words describe and the dead letters view use.
const ROUTE_COUNTERS = [
  ["delivered", "delivered"],
  ["failedAttempts", "failed attempts"],
  ["deadLettered", "dead letters"],
  ["dropped", "dropped"],
  ["lag", "lag"],
];
const FAILURES = ["failedAttempts", "dropped", "deadLettered", "failed"];
const LAG_NOTICE = 100;

export function rateOf(node, previous, seconds) {
  if (!previous || seconds <= 0) return null;
  const key = (RATE_COUNTERS[node.role] || []).find((name) => name in node.counters);
  if (!key) return null;
  return { key, value: Math.max(0, (node.counters[key] - (previous.counters[key] || 0)) / seconds) };
}

export function healthOf(node, previous) {
  if (node.health !== "ok") return node.health;
  if (previous) {
    const grew = FAILURES.some((name) => (node.counters[name] || 0) > (previous.counters[name] || 0));
    if (grew) return "failing";
    const lag = node.counters.lag || 0;
    if (lag >= LAG_NOTICE && lag > (previous.counters.lag || 0)) return "lagging";
  }
  return "ok";
}

// The last error, with when and which attempt; muted once the route is healthy again.
function lastError(node, health) {
  if (!node.lastError) return null;
  const when = [node.lastErrorAttempt ? `attempt ${node.lastErrorAttempt}` : "",
    node.lastErrorTime ? fmtTime(node.lastErrorTime) : ""].filter(Boolean).join(", ");
  return el("div", {
    class: health === "ok" ? "err old" : "err",
    "data-field": "last-error",
    text: `last error${when ? ` (${when})` : ""}: ${node.lastError}`,
  });
}

export class TopologyView {
  constructor(root) {
    this.root = root;
    this.previous = null; // {time, nodes: Map}
    this.poller = new Poller("/api/v1/topology", REFRESH, (graph) => this.render(graph), (error) => {
      this.root.replaceChildren(el("p", { class: "error", text: `topology: ${error.message}` }));
    });
    this.resize = () => this.drawEdges();
  }

  show() {
    window.addEventListener("resize", this.resize);
    this.poller.start();
  }

  hide() {
    window.removeEventListener("resize", this.resize);
    this.poller.stop();
  }

  render(graph) {
    const previous = this.previous;
    const seconds = previous ? graph.time - previous.time : 0;
    const outgoing = new Map();
    for (const edge of graph.edges) {
      if (!outgoing.has(edge.from)) outgoing.set(edge.from, []);
      outgoing.get(edge.from).push(edge);
    }
    const columns = COLUMNS.map(([role, title]) => {
      const nodes = graph.nodes.filter((node) => node.role === role);
      return el("div", { class: "column", "data-role": role },
        el("h2", { text: title }),
        ...nodes.map((node) => this.card(node, previous && previous.nodes.get(node.id), seconds, outgoing)),
        nodes.length ? null : el("p", { class: "hint", text: "none" }));
    });
    this.edges = graph.edges;
    this.root.replaceChildren(...columns);
    this.drawEdges();
    this.previous = { time: graph.time, nodes: new Map(graph.nodes.map((n) => [n.id, n])) };
  }

  card(node, previous, seconds, outgoing) {
    const health = healthOf(node, previous);
    const rate = rateOf(node, previous, seconds);
    const c = node.counters;
    let shown;
    if (node.role === "route") {
      // "dropped" only when something was: under Headwater every given-up event is kept.
      shown = ROUTE_COUNTERS.filter(([key]) => key !== "dropped" || c.dropped)
        .map(([key, label]) => [label, c[key]]);
    } else {
      shown = Object.entries(c).filter(([key]) => !HIDDEN_COUNTERS.has(key)).slice(0, 4);
    }
    const stats = [shown.map(([key, value]) => `${key} ${fmtNumber(value || 0)}`).join(" · ")];
    const letters = node.role === "route" && c.deadLettered
      ? el("a", {
        class: "letters",
        href: `#deadletters?origin=${encodeURIComponent(node.id)}`,
        text: `${fmtNumber(c.deadLettered)} dead letters →`,
      })
      : null;
    if (rate) stats.unshift(el("b", { text: fmtRate(rate.value) }), ` ${rate.key} now · `);
    const targets = (outgoing.get(node.id) || []).map((edge) => `${edge.via} → ${edge.to.replace(/^uri:/, "")}`);
    return el("div", {
      class: `node health-${health}`,
      "data-id": node.id,
      "data-health": health,
      title: node.reason || "",
    },
    el("div", { class: "kind", text: `${node.kind}${health === "ok" ? "" : ` · ${health}`}` }),
    el("div", { class: "name", text: node.namespace ? `${node.namespace}/${node.name}` : node.name }),
    el("div", { class: "stats" }, ...stats),
    targets.length ? el("div", { class: "to", text: targets.join("\n") }) : null,
    lastError(node, health),
    letters);
  }

  drawEdges() {
    const old = this.root.querySelector("svg.edges");
    if (old) old.remove();
    if (!this.edges || getComputedStyle(this.root).gridTemplateColumns.split(" ").length < 4) return;
    const box = this.root.getBoundingClientRect();
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "edges");
    for (const edge of this.edges) {
      const from = this.root.querySelector(`.node[data-id="${CSS.escape(edge.from)}"]`);
      const to = this.root.querySelector(`.node[data-id="${CSS.escape(edge.to)}"]`);
      if (!from || !to) continue;
      const a = from.getBoundingClientRect();
      const b = to.getBoundingClientRect();
      const x1 = a.right - box.left;
      const y1 = a.top + a.height / 2 - box.top;
      const x2 = b.left - box.left;
      const y2 = b.top + b.height / 2 - box.top;
      const bend = Math.max(30, Math.abs(x2 - x1) / 2);
      const path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`);
      if (edge.via !== "deadLetterSink") path.setAttribute("class", "hot");
      svg.append(path);
    }
    this.root.prepend(svg);
  }
}
