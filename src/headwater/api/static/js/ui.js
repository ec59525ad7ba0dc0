// Small DOM helpers shared by the views.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function fmtTime(value) {
  if (!value) return "";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleTimeString();
}

export function fmtNumber(value) {
  if (typeof value !== "number") return String(value);
  if (Math.abs(value) >= 1000 || Number.isInteger(value)) return value.toLocaleString();
  return value.toFixed(Math.abs(value) < 10 ? 2 : 1);
}

export function fmtRate(perSecond) {
  if (!perSecond) return "0/s";
  return perSecond >= 100 ? `${Math.round(perSecond)}/s` : `${perSecond.toFixed(1)}/s`;
}

let toastTimer = 0;
export function toast(message, bad = false) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.classList.toggle("bad", bad);
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 5000);
}

// A modal confirmation; resolves true when the user confirms.
export function confirmDialog(title, text, okLabel) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// A modal with a title and any content (definition lists, JSON...).
export function showDetail(title, ...content) {
  const dialog = document.getElementById("detail");
  document.getElementById("detail-title").textContent = title;
  document.getElementById("detail-body").replaceChildren(
    ...content.filter((part) => part !== null && part !== undefined));
  dialog.showModal();
}

export function definitions(pairs) {
  const list = el("dl");
  for (const [term, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    list.append(el("dt", { text: term }), el("dd", { text: String(value) }));
  }
  return list;
}

export function jsonBlock(value) {
  return el("pre", { class: "mono", text: JSON.stringify(value, null, 2) });
}

// Tracing: the viewer's address for one trace (`headwater up --trace-url`), as
// /api/v1/status says; main.js keeps it current.
export const tracing = { traceUrl: null };

const TRACEPARENT = /^[ \t]*[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})/;

// The trace id of an event's W3C traceparent (the CloudEvents distributed
// tracing extension), or null when it has none or an invalid one.
export function traceId(event) {
  const match = TRACEPARENT.exec(typeof event.traceparent === "string" ? event.traceparent : "");
  if (!match || /^0+$/.test(match[1]) || /^0+$/.test(match[2])) return null;
  return match[1];
}

// A "trace" entry for a detail view: the id, linked to the viewer when there is one.
export function traceEntry(event) {
  const id = traceId(event);
  if (!id) return null;
  const sampled = (parseInt(event.traceparent.trim().slice(53, 55), 16) & 1) === 1;
  const note = sampled ? "" : " (not sampled at ingest)";
  const shown = tracing.traceUrl
    ? el("a", { href: tracing.traceUrl.replace("{trace_id}", id), target: "_blank",
      rel: "noopener", class: "mono", text: id })
    : el("span", { class: "mono", text: id });
  return el("dl", { class: "trace" }, el("dt", { text: "trace" }), el("dd", {}, shown, note));
}
