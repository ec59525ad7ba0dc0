// The dashboard's entry point: tabs (by URL hash), the connection indicator,
// and the token prompt. Each view has show()/hide(): only the visible one polls
// or streams.

import { getJSON, onTokenNeeded } from "./api.js";
import { DeadLettersView } from "./deadletters.js";
import { DevicesView } from "./devices.js";
import { EventsView } from "./events.js";
import { NodesView } from "./nodes.js";
import { TopologyView } from "./topology.js";
import { tracing } from "./ui.js";

const STATUS_INTERVAL = 5000;

const views = {
  topology: new TopologyView(document.getElementById("topology")),
  events: new EventsView(),
  devices: new DevicesView(),
  deadletters: new DeadLettersView(),
  nodes: new NodesView(),
};
let current = null;

// `#view` or `#view?key=value`: the parameters go to the view's show().
function route() {
  const [wanted, query] = location.hash.slice(1).split("?", 2);
  const name = wanted in views ? wanted : "topology";
  const params = new URLSearchParams(query || "");
  if (name === current && !query) return;
  if (current) {
    views[current].hide();
    document.getElementById(`view-${current}`).hidden = true;
  }
  current = name;
  document.getElementById(`view-${name}`).hidden = false;
  for (const link of document.querySelectorAll("#tabs a")) {
    link.classList.toggle("active", link.dataset.view === name);
  }
  views[name].show(params);
}

onTokenNeeded(() => {
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(input.value.trim()), { once: true });
    dialog.showModal();
  });
});

async function checkStatus() {
  const conn = document.getElementById("conn");
  try {
    const status = await getJSON("/api/v1/status");
    const node = status.node ? `node ${status.node} · ` : "";
    conn.textContent = `${node}v${status.version} · up ${Math.round(status.uptimeSeconds)}s`;
    tracing.traceUrl = status.tracing ? status.tracing.traceUrl : null;
    conn.className = "conn ok";
    const dead = await getJSON("/api/v1/deadletters?limit=100");
    const open = dead.items.filter((item) => item.redriven !== "delivered").length;
    const badge = document.getElementById("dl-count");
    badge.textContent = dead.items.length >= 100 ? `${open}+` : String(open);
    badge.hidden = open === 0;
  } catch (error) {
    conn.textContent = `unreachable: ${error.message}`;
    conn.className = "conn bad";
  }
}

window.addEventListener("hashchange", route);
route();
checkStatus();
setInterval(checkStatus, STATUS_INTERVAL);
// For tests and the curious: the views, and a liveness probe.
window.headwater = { views, alive: () => true };
