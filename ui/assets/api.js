// The page's only way to the server: JSON calls, the event stream and the
// metrics, each with the bearer token when there is one.
//
// The event stream is read with fetch, not EventSource: EventSource cannot
// send an Authorization header, and the token must not travel in a URL (it
// would land in histories and logs) or in a cookie (which every request to
// the origin would then carry).

const KEY = 'vigil.token';

// token is kept for the tab only (sessionStorage): closing the tab forgets it.
export const token = {
  get: () => sessionStorage.getItem(KEY) || '',
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

// Unauthorized is thrown when the server wants a token the page does not
// have, or refuses the one it has.
export class Unauthorized extends Error {
  constructor(hadToken) {
    super(hadToken ? 'the token was refused' : 'a token is required');
    this.hadToken = hadToken;
  }
}

// APIError is an error answer in the API's shape: code, message, field.
export class APIError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || '';
    this.field = e.field || '';
  }
}

const listeners = new Set();

// onUnauthorized registers what to do when any call gets a 401.
export function onUnauthorized(fn) { listeners.add(fn); }

function unauthorized() {
  const err = new Unauthorized(token.get() !== '');
  for (const fn of listeners) fn(err);
  return err;
}

function headers(extra) {
  const hs = {...extra};
  const t = token.get();
  if (t) hs.Authorization = `Bearer ${t}`;
  return hs;
}

// call makes one API request and returns its JSON. timing, when given,
// gets `sent`, `headers` and `arrived`: performance.now() when the request
// left, when the response's headers came back, and when all of it had.
export async function call(path, {method = 'GET', body, signal, timing} = {}) {
  const init = {method, signal, cache: 'no-store', headers: headers({Accept: 'application/json'})};
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (timing) timing.sent = performance.now();
  const res = await fetch(path, init);
  if (timing) timing.headers = performance.now();
  if (res.status === 401) throw unauthorized();
  const text = await res.text();
  if (timing) timing.arrived = performance.now();
  let data = null;
  if (text && (res.headers.get('Content-Type') || '').includes('json')) data = JSON.parse(text);
  if (!res.ok) throw new APIError(res.status, data);
  return data ?? text;
}

// text fetches a non-JSON resource (the metrics).
export async function text(path, {signal} = {}) {
  const res = await fetch(path, {signal, cache: 'no-store', headers: headers({Accept: 'text/plain'})});
  if (res.status === 401) throw unauthorized();
  if (!res.ok) throw new APIError(res.status, null);
  return res.text();
}

// stream follows a Server-Sent Events route: onEvent(name, data, id) for
// each event, onState('live' | 'reconnecting' | 'closed', detail). After a
// drop it reconnects with Last-Event-ID (backing off from 0.5 s to 10 s), so
// the server resumes where the stream was. close() ends it.
export function stream(path, {onEvent, onState = () => {}}) {
  const ctl = new AbortController();
  let last = '';
  let closed = false;
  (async () => {
    let delay = 500;
    while (!closed) {
      try {
        const hs = headers({Accept: 'text/event-stream'});
        if (last) hs['Last-Event-ID'] = last;
        const res = await fetch(path, {headers: hs, signal: ctl.signal, cache: 'no-store'});
        if (res.status === 401) {
          unauthorized();
          onState('closed', 'unauthorized');
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        onState('live');
        delay = 500;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const {value, done} = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, '\n');
          let end;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const frame = buf.slice(0, end);
            buf = buf.slice(end + 2);
            const ev = parseFrame(frame);
            if (!ev) continue;
            if (ev.id) last = ev.id;
            let data = ev.data;
            try { data = JSON.parse(ev.data); } catch { /* not JSON: as is */ }
            onEvent(ev.event, data, ev.id);
          }
        }
        throw new Error('stream ended');
      } catch (err) {
        if (closed) return;
        onState('reconnecting', String(err.message || err));
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 10_000);
    }
  })();
  return {close() { closed = true; ctl.abort(); }};
}

// parseFrame reads one SSE frame; null for a comment-only frame.
export function parseFrame(frame) {
  const ev = {event: 'message', data: '', id: ''};
  const data = [];
  let any = false;
  for (const line of frame.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') { data.push(value); any = true; } else if (field === 'event') { ev.event = value; any = true; } else if (field === 'id') { ev.id = value; any = true; }
  }
  if (!any) return null;
  ev.data = data.join('\n');
  return ev;
}

// parseMetrics reads the Prometheus text format into {name: [{labels,
// value}]}, keeping only the families wanted.
export function parseMetrics(body, wanted) {
  const out = {};
  const lineRe = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const line of body.split('\n')) {
    if (line === '' || line[0] === '#') continue;
    const m = lineRe.exec(line);
    if (!m || !wanted.some((w) => m[1].startsWith(w))) continue;
    const labels = {};
    if (m[2]) for (const l of m[2].matchAll(labelRe)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    (out[m[1]] ||= []).push({labels, value: Number(m[3])});
  }
  return out;
}

// probeStats is what the overview shows of /metrics: the probes counted so
// far, the schedule-lag histogram's cumulative buckets, and probes in flight.
export function probeStats(body) {
  const m = parseMetrics(body, ['vigil_probes_total', 'vigil_schedule_lag_seconds', 'vigil_probes_in_flight']);
  const sum = (xs) => (xs || []).reduce((a, x) => a + x.value, 0);
  const buckets = (m.vigil_schedule_lag_seconds_bucket || [])
    .map((b) => [b.labels.le === '+Inf' ? Infinity : Number(b.labels.le), b.value])
    .sort((a, b) => a[0] - b[0]);
  return {probes: sum(m.vigil_probes_total), lag: buckets, lagCount: sum(m.vigil_schedule_lag_seconds_count),
    inFlight: sum(m.vigil_probes_in_flight), at: performance.now()};
}

// quantile estimates the q-quantile of the observations between two
// cumulative histograms (as Prometheus' histogram_quantile does: linear
// within the bucket); null when nothing was observed. The value is in the
// histogram's unit; an estimate in the +Inf bucket is its lower bound.
export function quantile(q, before, after) {
  const delta = after.map(([le, c], i) => [le, c - ((before && before[i] && before[i][0] === le) ? before[i][1] : 0)]);
  const total = delta.length ? delta[delta.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0, below = 0;
  for (const [le, c] of delta) {
    if (c >= rank) {
      if (le === Infinity) return lower;
      return lower + (le - lower) * ((rank - below) / Math.max(c - below, 1e-12));
    }
    lower = le; below = c;
  }
  return lower;
}
