// vigil's dashboard: the shell (token, fleet or single host, the live event
// stream, routing) and its three views. Plain modules, no build step.
import {call, stream, token, onUnauthorized, Unauthorized, APIError} from './api.js';
import {h, fill} from './dom.js';
import {overview} from './overview.js';
import {instances} from './instances.js';
import {instance} from './instance.js';

// window.vigil is what the page exposes of itself for people with a console
// and for the browser tests: the render timings of each view.
const probe = (window.vigil = {timings: [], events: 0, ready: false});

const main = document.getElementById('main');
const conn = document.getElementById('conn');
const scope = document.getElementById('scope');
const forget = document.getElementById('forget');

// app is the state the views share. Views subscribe to events with on()
// and get call() so that every request carries the token.
const app = {
  fleet: false,
  nodes: [], // in a fleet: /v1/nodes
  self: '', // in a fleet: the node serving this page, when its address says so
  feed: [], // the last events, newest first
  call,
  listeners: new Set(),
  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); },
  emit(name, data) { for (const fn of this.listeners) fn(name, data); },
  summaryPath() { return this.fleet ? '/v1/summary?scope=fleet' : '/v1/summary'; },
  scoped(q) { if (this.fleet) q.set('scope', 'fleet'); return q; },
  timing(entry) {
    probe.timings.push(entry);
    if (probe.timings.length > 500) probe.timings.shift();
  },
};

const FEED_MAX = 100;
let events = null; // the live stream
let view = null; // cleanup of the current view
let locked = false; // asking for the token

onUnauthorized((err) => {
  if (!locked) askToken(err.hadToken);
});

// start learns whether this vigil is a node of a fleet (/v1/nodes answers
// 200), which is also the first call that needs the token.
async function start() {
  locked = false;
  fill(main, h('p', {class: 'loading'}, 'Loading…'));
  try {
    await learnScope();
  } catch (err) {
    if (err instanceof Unauthorized) return; // askToken is showing
    fill(main, h('section', {class: 'problem', role: 'alert'}, h('h1', {tabindex: -1}, 'vigil does not answer'),
      h('p', {}, String(err.message || err)), h('button', {type: 'button', onclick: start}, 'Try again')));
    return;
  }
  forget.hidden = token.get() === '';
  follow();
  route();
  probe.ready = true;
}

async function learnScope() {
  try {
    const body = await call('/v1/nodes');
    app.fleet = true;
    app.nodes = body.nodes || [];
    const me = app.nodes.find((nd) => nd.api_address === location.host);
    app.self = me ? me.name : '';
    const down = app.nodes.filter((nd) => !nd.up).length;
    scope.textContent = `Fleet · ${app.nodes.length} nodes${down ? ` · ${down} down` : ''}`;
  } catch (err) {
    if (!(err instanceof APIError) || err.status !== 404) throw err;
    app.fleet = false;
    app.nodes = [];
    scope.textContent = 'One host';
  }
}

// follow keeps one event stream open for the whole page: every view hears
// transitions from it.
function follow() {
  if (events) events.close();
  const path = app.fleet ? '/v1/events?scope=fleet' : '/v1/events';
  events = stream(path, {
    onState(state) {
      conn.dataset.state = state;
      conn.textContent = state === 'live' ? 'Live' : state === 'reconnecting' ? 'Reconnecting…' : 'Stream closed';
      if (state === 'live') app.emit('open', null);
    },
    onEvent(name, data) {
      probe.events++;
      if (name === 'transition' || name === 'flapping' || name === 'flapping_ended' || name.startsWith('incident') ||
          name === 'node_down' || name === 'node_up' || name === 'silence_ended') {
        app.feed.unshift({name, data, seen: Date.now()});
        if (app.feed.length > FEED_MAX) app.feed.length = FEED_MAX;
      }
      if (name === 'node_down' || name === 'node_up') learnScope().catch(() => {});
      app.emit(name, data);
    },
  });
}

function stop() {
  if (events) events.close();
  events = null;
  if (view) view();
  view = null;
  probe.ready = false;
}

// askToken replaces the page with the token form; refused says the last
// token was wrong.
function askToken(refused) {
  locked = true;
  stop();
  token.clear();
  forget.hidden = true;
  conn.textContent = '';
  scope.textContent = '';
  const input = h('input', {id: 'token', name: 'token', type: 'password', autocomplete: 'current-password', required: true,
    'aria-describedby': 'token-help', spellcheck: 'false'});
  const form = h('form', {class: 'token', onsubmit(ev) {
    ev.preventDefault();
    if (!input.value) return;
    token.set(input.value.trim());
    start();
  }},
  h('label', {for: 'token'}, 'API token'),
  h('div', {class: 'row'}, input, h('button', {type: 'submit'}, 'Use token')),
  h('p', {id: 'token-help', class: 'help'}, 'The bearer token vigil serve was started with (--token or VIGIL_TOKEN). ',
    'It is kept for this tab only and sent as an Authorization header, never in a URL.'));
  fill(main, h('section', {class: 'auth', 'aria-labelledby': 'auth-h'},
    h('h1', {id: 'auth-h', tabindex: -1}, 'This vigil requires a token'),
    refused ? h('p', {class: 'error', role: 'alert', id: 'auth-error'}, 'The token was refused (401): no data can be shown without the right one.')
      : h('p', {id: 'auth-error'}, 'Every API call needs it; without it nothing can be shown.'),
    form));
  input.focus();
}

forget.addEventListener('click', () => askToken(false));

// route shows the view the location's hash names:
//   #/                      overview
//   #/instances?status=…    the instance table with its filters
//   #/instances/<id>        one instance
function route() {
  if (locked) return;
  if (view) view();
  view = null;
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, query = ''] = hash.split('?');
  const params = new URLSearchParams(query);
  let name = 'overview';
  const m = /^\/instances\/(.+)$/.exec(path);
  if (m) {
    name = 'instances';
    view = instance(app, main, decodeURIComponent(m[1]));
  } else if (path === '/instances') {
    name = 'instances';
    view = instances(app, main, params);
  } else {
    view = overview(app, main);
  }
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

window.addEventListener('hashchange', () => {
  route();
  const h1 = main.querySelector('h1');
  if (h1) h1.focus({preventScroll: false});
});

start();
