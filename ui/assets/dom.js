// DOM and formatting helpers. Text always goes in as text (never as HTML).

// h builds an element: h('a', {href: '#/', class: 'x'}, 'text', child, …).
// Attributes that are null, undefined or false are left out; `on*`
// functions are listeners.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') Object.assign(el.style, v); // through the CSSOM: the page's CSP refuses style attributes
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

// fill replaces an element's children, leaving out null and false.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

const SVG = 'http://www.w3.org/2000/svg';

// s builds an SVG element.
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v != null) el.setAttribute(k, String(v));
  for (const c of children) if (c != null) el.append(c);
  return el;
}

const num = new Intl.NumberFormat('en-US');

// n formats a count: 100 000 reads "100,000".
export const n = (v) => num.format(v ?? 0);

// STATUSES in the order people look at them, with a glyph each, so that a
// status never relies on colour alone.
export const STATUSES = ['unhealthy', 'starting', 'unknown', 'healthy', 'disabled'];
const GLYPH = {unhealthy: '✕', starting: '◔', unknown: '?', healthy: '✓', disabled: '–'};

// badge is a status as text with its glyph.
export function badge(status, extra) {
  return h('span', {class: `badge st-${status}`, dataset: {status}},
    h('span', {class: 'glyph', 'aria-hidden': 'true'}, GLYPH[status] || '·'), ' ', status, extra ? ` ${extra}` : '');
}

// parseDuration reads a Go duration string ("1.5ms", "2m0s", "150µs") in
// milliseconds; NaN for anything else.
export function parseDuration(v) {
  if (typeof v !== 'string' || v === '') return NaN;
  if (v === '0') return 0;
  const unit = {ns: 1e-6, us: 1e-3, 'µs': 1e-3, 'μs': 1e-3, ms: 1, s: 1e3, m: 6e4, h: 36e5};
  const re = /(\d+(?:\.\d+)?)(ns|us|µs|μs|ms|s|m|h)/g;
  let total = 0, seen = 0, m;
  while ((m = re.exec(v)) !== null) {
    total += parseFloat(m[1]) * unit[m[2]];
    seen += m[0].length;
  }
  const sign = v.startsWith('-') ? -1 : 1;
  return seen === v.length - (sign < 0 ? 1 : 0) ? sign * total : NaN;
}

// ms formats milliseconds for a probe: "0.42 ms", "12 ms", "1.2 s".
export function ms(v) {
  if (!Number.isFinite(v)) return '—';
  if (v < 1) return `${v.toFixed(2)} ms`;
  if (v < 100) return `${v.toFixed(1)} ms`;
  if (v < 1000) return `${Math.round(v)} ms`;
  return `${(v / 1000).toFixed(v < 1e4 ? 2 : 1)} s`;
}

// span formats a length of time, coarsely: "42 s", "3 min",
// "5 h 12 min", "3 d 4 h".
export function span(msec) {
  const sec = Math.max(0, Math.floor(msec / 1000));
  if (sec < 60) return `${sec} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min`;
  const hr = Math.floor(min / 60);
  if (hr < 48) return `${hr} h ${min % 60} min`;
  return `${Math.floor(hr / 24)} d ${hr % 24} h`;
}

// time is an element showing an instant as local time, with the instant in
// its datetime (and title) for those who want it exact.
export function time(iso, text) {
  if (!iso) return h('span', {class: 'none'}, '—');
  const d = new Date(iso);
  return h('time', {datetime: iso, title: d.toISOString()}, text ?? clock(d));
}

// formatters are made once: making one per call costs more than the row
const hms = new Intl.DateTimeFormat('en-GB', {hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false});
const ymd = new Intl.DateTimeFormat('en-CA', {year: 'numeric', month: '2-digit', day: '2-digit'});

// clock is a local time of day, with the date when it is not today.
export function clock(d) {
  const t = hms.format(d);
  if (d.toDateString() === new Date().toDateString()) return t;
  return `${ymd.format(d)} ${t}`;
}

// relative says when an instant is from now: "in 4 s", "12 min ago".
export function relative(iso, now = Date.now()) {
  if (!iso) return '—';
  const d = Date.parse(iso) - now;
  return d >= 0 ? `in ${span(d)}` : `${span(-d)} ago`;
}

// tail is the end of a text, at most max characters.
export function tail(text, max = 160) {
  if (!text) return '';
  return text.length <= max ? text : '…' + text.slice(text.length - max + 1);
}

// nextFrame resolves once the browser has had the chance to paint.
export const nextFrame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
