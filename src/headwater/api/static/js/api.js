// Talking to the admin API: JSON calls and server-sent event streams over fetch
// (fetch, unlike EventSource, shows a 400's reason and can send the token).

const TOKEN_KEY = "headwater-token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let askToken = null; // set by main.js: () => Promise<string>

export function onTokenNeeded(fn) {
  askToken = fn;
}

function headers(extra) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) message = body.error;
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

async function send(path, options) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401 && askToken) {
    sessionStorage.setItem(TOKEN_KEY, await askToken());
    return fetch(path, { ...options, headers: headers(options.headers) });
  }
  return response;
}

export async function getJSON(path, signal) {
  const response = await send(path, { signal });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postJSON(path, body) {
  const response = await send(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// Reads a text/event-stream; calls onData(text) for each event's data, and
// onWarning(text) for events named "warning" (the server's remarks, e.g. a
// filter reading an attribute no event has). Resolves when the stream ends;
// rejects with ApiError when the server refuses it (the reason included), or
// with an AbortError when `signal` aborts it.
export async function readStream(path, signal, onData, onOpen, onWarning) {
  const response = await send(path, { signal, headers: { Accept: "text/event-stream" } });
  if (!response.ok) throw await failure(response);
  if (onOpen) onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end = buffer.indexOf("\n\n");
    while (end >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      end = buffer.indexOf("\n\n");
      if (block.startsWith(":")) continue; // a comment: keepalive
      let data = "";
      let name = "message";
      for (const line of block.split("\n")) {
        if (line.startsWith("data: ")) data += (data ? "\n" : "") + line.slice(6);
        else if (line.startsWith("event: ")) name = line.slice(7);
      }
      if (!data) continue;
      if (name === "message") onData(data);
      else if (name === "warning" && onWarning) onWarning(data);
    }
  }
}

export function isAbort(error) {
  return error && error.name === "AbortError";
}

// GETs `path` now and every `interval` ms until stopped; hands each body to
// onData and each failure (never an abort) to onError.
export class Poller {
  constructor(path, interval, onData, onError) {
    Object.assign(this, { path, interval, onData, onError });
    this.timer = 0;
    this.abort = null;
  }

  async start() {
    this.stop();
    const abort = new AbortController();
    this.abort = abort;
    try {
      this.onData(await getJSON(this.path, abort.signal));
    } catch (error) {
      if (isAbort(error)) return;
      this.onError(error);
    }
    if (this.abort === abort) this.timer = setTimeout(() => this.start(), this.interval);
  }

  stop() {
    clearTimeout(this.timer);
    if (this.abort) this.abort.abort();
    this.abort = null;
  }
}
