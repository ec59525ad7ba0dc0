// Nodes: the Headwater nodes of the mesh (`headwater up --nats`), from their
// heartbeats: where each listens, its version, uptime, connected devices and
// load. Without a mesh the one node is shown alone. Each node's own dashboard
// is a click away.

import { Poller } from "./api.js";
import { el, fmtNumber, toast } from "./ui.js";

const REFRESH = 2000;

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function mebibytes(bytes) {
  return typeof bytes === "number" && bytes > 0 ? `${Math.round(bytes / 1048576)} MiB` : "";
}

export class NodesView {
  constructor() {
    this.rows = document.getElementById("node-rows");
    this.note = document.getElementById("nodes-note");
    this.poller = new Poller("/api/v1/nodes", REFRESH, (body) => this.render(body),
      (error) => toast(`nodes: ${error.message}`, true));
  }

  show() {
    this.poller.start();
  }

  hide() {
    this.poller.stop();
  }

  render(body) {
    this.note.textContent = body.mesh
      ? `${body.items.length} node(s) in the mesh; this dashboard is node ${body.self}'s.`
      : "A single node: start several with `headwater up --nats URLS` to form a mesh.";
    this.rows.replaceChildren(...body.items.map((node) => this.row(node, body.self)));
  }

  row(node, self) {
    const http = (node.addresses || {}).http;
    const mqtt = Object.entries(node.addresses || {})
      .filter(([key]) => key.startsWith("mqtt"))
      .map(([, url]) => url)
      .join(" ");
    const name = el("td", { "data-testid": "node-name" },
      el("strong", { text: node.name }),
      node.name === self ? el("span", { class: "badge ok", text: "this node" }) : null);
    const cpu = typeof node.cpu === "number" ? `${fmtNumber(node.cpu * 100)}%` : "";
    return el("tr", { "data-node": node.name },
      name,
      el("td", {}, http ? el("a", { href: `${http}/#nodes`, text: http }) : ""),
      el("td", { class: "mono", text: mqtt }),
      el("td", { text: node.version }),
      el("td", { text: duration(node.uptimeSeconds || 0) }),
      el("td", { text: String(node.devices ?? 0) }),
      el("td", { text: cpu }),
      el("td", { text: mebibytes(node.rss) }),
    );
  }
}
