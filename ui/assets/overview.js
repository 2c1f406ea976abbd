// The overview: counts per status (per node in a fleet), probing rate and
// scheduling lag from /metrics, and the live feed of transitions.
import {text, probeStats, quantile, APIError} from './api.js';
import {h, fill, n, badge, STATUSES, time, ms, nextFrame} from './dom.js';

const METRICS_EVERY = 2000; // ms between scrapes of /metrics
const WINDOW = 10_000; // ms of samples the rate and lag are computed over
const SUMMARY_EVERY = 5000; // ms between resyncs of the counts

export function overview(app, main) {
  const counts = h('ul', {class: 'counts', id: 'counts', 'aria-label': 'Instances by status'});
  const bar = h('div', {class: 'bar', 'aria-hidden': 'true'});
  const totalEl = h('p', {class: 'total', id: 'total'});
  const nodes = h('div', {id: 'nodes'});
  const stats = h('dl', {class: 'stats', id: 'stats'},
    h('div', {}, h('dt', {}, 'Probes per second'), h('dd', {id: 'stat-rate'}, 'measuring…')),
    h('div', {}, h('dt', {}, 'Scheduling lag p50'), h('dd', {id: 'stat-p50'}, 'measuring…')),
    h('div', {}, h('dt', {}, 'Scheduling lag p99'), h('dd', {id: 'stat-p99'}, 'measuring…')),
    h('div', {}, h('dt', {}, 'Probes in flight'), h('dd', {id: 'stat-inflight'}, '—')));
  const statsNote = h('p', {class: 'help', id: 'stats-note'}, app.fleet
    ? 'From this node’s /metrics, over the last 10 s.' : 'From /metrics, over the last 10 s.');
  const feed = h('ol', {class: 'feed', id: 'feed', role: 'log', 'aria-label': 'Transitions, newest first', 'aria-live': 'polite'});
  const feedEmpty = h('p', {class: 'help', id: 'feed-empty'}, `Waiting for transitions (live since ${new Date().toLocaleTimeString('en-GB')}).`);
  const problem = h('p', {class: 'error', role: 'alert', hidden: true});

  fill(main,
    h('h1', {tabindex: -1}, 'Overview'),
    problem,
    h('section', {'aria-labelledby': 'ov-status'}, h('h2', {id: 'ov-status'}, app.fleet ? 'The fleet’s instances' : 'Instances'),
      totalEl, bar, counts),
    app.fleet ? h('section', {'aria-labelledby': 'ov-nodes'}, h('h2', {id: 'ov-nodes'}, 'Nodes'), nodes) : null,
    h('div', {class: 'columns'},
      h('section', {'aria-labelledby': 'ov-probing'}, h('h2', {id: 'ov-probing'}, 'Probing'), stats, statsNote),
      h('section', {'aria-labelledby': 'ov-feed', class: 'feed-box'}, h('h2', {id: 'ov-feed'}, 'Live transitions'), feedEmpty, feed)));

  let summary = null;
  let stopped = false;
  const timers = [];

  function renderCounts() {
    if (!summary) return;
    const total = summary.total ?? STATUSES.reduce((a, st) => a + (summary[st] || 0), 0);
    fill(totalEl, h('span', {class: 'num', dataset: {count: 'total'}}, n(total)), ' instances');
    fill(counts, ...STATUSES.map((st) => h('li', {class: `count st-${st}`},
      h('a', {href: `#/instances?status=${st}`, 'aria-label': `${n(summary[st])} ${st}: list them`},
        h('span', {class: 'num', dataset: {count: st}}, n(summary[st])), h('span', {class: 'what'}, badge(st))))));
    fill(bar, ...STATUSES.filter((st) => summary[st] > 0).map((st) =>
      h('span', {class: `seg st-${st}`, style: {flexGrow: String(summary[st])}})));
  }

  function renderNodes() {
    if (!app.fleet) return;
    const per = (summary && summary.nodes) || {};
    const rows = app.nodes.map((nd) => {
      const c = per[nd.name] || nd.summary || {};
      return h('tr', {dataset: {node: nd.name, up: String(nd.up)}, class: nd.up ? '' : 'down'},
        h('th', {scope: 'row'}, nd.name),
        h('td', {'data-label': 'State'}, nd.up ? h('span', {class: 'badge st-healthy'}, '✓ up') : h('span', {class: 'badge st-unhealthy'}, '✕ down'),
          ' ', h('span', {class: 'help'}, 'since ', time(nd.since))),
        h('td', {'data-label': 'Instances', class: 'numeric'}, n(c.total ?? nd.instances)),
        ...STATUSES.map((st) => h('td', {'data-label': st, class: 'numeric'}, n(c[st]))));
    });
    const down = app.nodes.filter((nd) => !nd.up);
    fill(nodes,
      down.length ? h('p', {class: 'error', id: 'nodes-down'}, `${down.length} node${down.length > 1 ? 's' : ''} down: ${down.map((d) => d.name).join(', ')}. `,
        'Their instances read unknown (node_down) until they return.') : h('p', {class: 'help', id: 'nodes-down'}, 'Every node is up.'),
      h('div', {class: 'scroll'}, h('table', {class: 'nodes'},
        h('caption', {class: 'sr-only'}, 'Nodes of the fleet with their instances by status'),
        h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Node'), h('th', {scope: 'col'}, 'State'), h('th', {scope: 'col', class: 'numeric'}, 'Instances'),
          ...STATUSES.map((st) => h('th', {scope: 'col', class: 'numeric'}, st)))),
        h('tbody', {}, rows))));
  }

  async function loadSummary() {
    try {
      const [s] = await Promise.all([app.call(app.summaryPath()), app.fleet ? loadNodes() : null]);
      if (stopped) return;
      summary = s;
      problem.hidden = true;
      renderCounts();
      renderNodes();
    } catch (err) {
      if (stopped) return;
      problem.hidden = false;
      problem.textContent = `Counts could not be read: ${err.message}`;
    }
  }

  async function loadNodes() {
    const body = await app.call('/v1/nodes');
    app.nodes = body.nodes || [];
  }

  // a transition moves one instance between counts at once; the periodic
  // summary corrects whatever the stream cannot say (a removed instance)
  function count(ev) {
    if (!summary || !ev.from || !ev.to || ev.from === ev.to) return;
    const shift = (c) => {
      if (!c) return;
      if (ev.reason === 'registered') c.total = (c.total || 0) + 1; // a new instance
      else if (c[ev.from] > 0) c[ev.from]--;
      c[ev.to] = (c[ev.to] || 0) + 1;
    };
    shift(summary);
    if (ev.node && summary.nodes) shift(summary.nodes[ev.node]);
  }

  function feedItem(e) {
    const d = e.data || {};
    const at = d.at || new Date(e.seen).toISOString();
    const link = (id) => h('a', {href: `#/instances/${encodeURIComponent(id)}`}, id);
    let body;
    switch (e.name) {
      case 'transition':
        body = [link(d.instance_id), ' ', badge(d.from), h('span', {'aria-hidden': 'true'}, ' → '), h('span', {class: 'sr-only'}, ' to '), badge(d.to),
          d.reason ? h('span', {class: 'reason'}, ` ${d.reason}`) : null,
          d.last_error ? h('span', {class: 'err'}, ` ${d.last_error}`) : null];
        break;
      case 'flapping':
        body = [link(d.instance_id), ' is flapping'];
        break;
      case 'flapping_ended':
        body = [link(d.instance_id), ' stopped flapping'];
        break;
      case 'node_down':
        body = [h('strong', {}, `Node ${d.node} is down`)];
        break;
      case 'node_up':
        body = [`Node ${d.node} is up`];
        break;
      default:
        body = [e.name.replace(/_/g, ' '), d.incident ? ` ${d.incident}` : '',
          d.details && d.details.instances ? ` · ${n(d.details.instances)} instances` : ''];
    }
    return h('li', {class: `ev ev-${e.name}`, dataset: {instance: d.instance_id || '', to: d.to || '', node: d.node || ''}},
      time(at), ' ', body, d.node && e.name === 'transition' ? h('span', {class: 'help'}, ` on ${d.node}`) : null);
  }

  function renderFeed() {
    fill(feed, ...app.feed.slice(0, 50).map(feedItem));
    feedEmpty.hidden = app.feed.length > 0;
  }

  let pending = false;
  const off = app.on(async (name, data) => {
    if (name === 'transition') count(data);
    if (name === 'node_down' || name === 'node_up' || name === 'reset' || name === 'open') loadSummary();
    if (name === 'open' || name === 'reset') return;
    if (pending) return; // a burst of events renders once per frame
    pending = true;
    const began = performance.now();
    await Promise.resolve();
    pending = false;
    if (stopped) return;
    renderCounts();
    renderNodes();
    renderFeed();
    await nextFrame();
    app.timing({view: 'feed', render: performance.now() - began, at: Date.now()});
  });

  // metrics: probes per second from the counter's rate, lag quantiles from
  // the histogram's buckets, both over the samples of the last WINDOW
  const samples = [];
  async function scrape() {
    try {
      const s = probeStats(await text('/metrics'));
      if (stopped) return;
      samples.push(s);
      while (samples.length > 2 && s.at - samples[1].at >= WINDOW) samples.shift();
      renderStats();
    } catch (err) {
      if (stopped) return;
      const why = err instanceof APIError && err.status === 404 ? 'This vigil serves no /metrics.' : `/metrics could not be read: ${err.message}`;
      statsNote.textContent = why;
    }
  }

  function renderStats() {
    const last = samples[samples.length - 1];
    document.getElementById('stat-inflight').textContent = n(last.inFlight);
    if (samples.length < 2) return;
    const first = samples[0];
    const secs = (last.at - first.at) / 1000;
    const rate = (last.probes - first.probes) / secs;
    const rateEl = document.getElementById('stat-rate');
    rateEl.textContent = rate >= 100 ? n(Math.round(rate)) : rate.toFixed(1);
    rateEl.dataset.value = String(rate);
    for (const [q, id] of [[0.5, 'stat-p50'], [0.99, 'stat-p99']]) {
      const v = quantile(q, first.lag, last.lag);
      const el = document.getElementById(id);
      el.textContent = v == null ? 'no probes due' : ms(v * 1000);
      el.dataset.value = v == null ? '' : String(v);
    }
    statsNote.textContent = `${app.fleet ? 'From this node’s' : 'From'} /metrics, over the last ${Math.round(secs)} s.`;
  }

  loadSummary();
  renderFeed();
  scrape();
  timers.push(setInterval(() => { if (!document.hidden) scrape(); }, METRICS_EVERY));
  timers.push(setInterval(() => { if (!document.hidden) loadSummary(); }, SUMMARY_EVERY));
  return () => {
    stopped = true;
    off();
    timers.forEach(clearInterval);
  };
}
