// The instance table: filtered by status, label and id prefix, sorted,
// paged on the server (the page holds one page of rows, never the fleet).
import {APIError} from './api.js';
import {h, fill, n, badge, STATUSES, time, span, nextFrame} from './dom.js';

const SORTS = [
  ['status', 'Unhealthy first'],
  ['id', 'Id'],
  ['since', 'Longest in status'],
  ['-since', 'Newest change'],
];
const LIMITS = [25, 50, 100, 200];

export function instances(app, main, params) {
  const sorts = app.fleet ? SORTS.filter(([v]) => v === 'status' || v === 'id') : SORTS;
  const state = {
    statuses: (params.get('status') || '').split(',').filter((st) => STATUSES.includes(st)),
    labels: params.get('label') || '',
    prefix: params.get('prefix') || '',
    sort: sorts.some(([v]) => v === params.get('sort')) ? params.get('sort') : 'status',
    limit: LIMITS.includes(Number(params.get('limit'))) ? Number(params.get('limit')) : 50,
  };
  let cursors = ['']; // the cursor of each page visited
  let page = 0;
  let seq = 0; // of the latest request: older answers are dropped
  let ctl = null;
  let stopped = false;
  let changes = 0;
  const rows = new Map(); // id → {tr, statusCell, sinceCell, since}

  // the form
  const boxes = STATUSES.map((st) => h('label', {class: 'check'},
    h('input', {type: 'checkbox', name: 'status', value: st, checked: state.statuses.includes(st)}), ' ', badge(st)));
  const prefix = h('input', {id: 'f-prefix', name: 'prefix', type: 'search', value: state.prefix, autocomplete: 'off',
    spellcheck: 'false', placeholder: 'vm-12', 'aria-describedby': 'f-prefix-err'});
  const labels = h('input', {id: 'f-label', name: 'label', type: 'search', value: state.labels, autocomplete: 'off',
    spellcheck: 'false', placeholder: 'service=web, zone=a', 'aria-describedby': 'f-label-help f-label-err'});
  const sort = h('select', {id: 'f-sort', name: 'sort'},
    sorts.map(([v, text]) => h('option', {value: v, selected: v === state.sort}, text)));
  const limit = h('select', {id: 'f-limit', name: 'limit'},
    LIMITS.map((v) => h('option', {value: v, selected: v === state.limit}, String(v))));
  const errors = {
    prefix: h('span', {id: 'f-prefix-err', class: 'field-error'}),
    label: h('span', {id: 'f-label-err', class: 'field-error'}),
  };
  const form = h('form', {class: 'filters', role: 'search', 'aria-label': 'Filter instances', onsubmit(ev) { ev.preventDefault(); apply(); }},
    h('fieldset', {}, h('legend', {}, 'Status'), h('div', {class: 'checks'}, boxes)),
    h('div', {class: 'field'}, h('label', {for: 'f-prefix'}, 'Id prefix'), prefix, errors.prefix),
    h('div', {class: 'field'}, h('label', {for: 'f-label'}, 'Labels'), labels,
      h('span', {id: 'f-label-help', class: 'help'}, 'key=value, comma-separated: all must match'), errors.label),
    h('div', {class: 'field'}, h('label', {for: 'f-sort'}, 'Sort'), sort),
    h('div', {class: 'field'}, h('label', {for: 'f-limit'}, 'Per page'), limit),
    h('div', {class: 'field submit'}, h('button', {type: 'submit'}, 'Apply')));

  // on a narrow screen the filters fold away behind their summary
  const wide = window.matchMedia('(min-width: 44.01rem)');
  const active = h('span', {class: 'help'});
  const box = h('details', {class: 'filter-box', open: wide.matches}, h('summary', {}, 'Filters', active), form);
  const unfold = () => { if (wide.matches) box.open = true; };
  wide.addEventListener('change', unfold);
  function note() {
    const k = (state.statuses.length ? 1 : 0) + (state.prefix ? 1 : 0) + (state.labels ? 1 : 0);
    active.textContent = k ? ` · ${k} active` : '';
  }
  note();

  const caption = h('caption', {id: 'list-caption'}, 'Instances');
  const tbody = h('tbody', {id: 'rows'});
  const table = h('table', {class: 'instances', id: 'instances', 'aria-describedby': 'list-status'},
    caption,
    h('thead', {}, h('tr', {},
      h('th', {scope: 'col'}, 'Instance'), h('th', {scope: 'col'}, 'Status'), h('th', {scope: 'col'}, 'In status for'),
      h('th', {scope: 'col'}, 'Last check'), h('th', {scope: 'col'}, 'Last error'),
      app.fleet ? h('th', {scope: 'col'}, 'Node') : null, h('th', {scope: 'col'}, 'Labels'))),
    tbody);
  const status = h('p', {id: 'list-status', class: 'list-status', role: 'status', 'aria-live': 'polite'});
  const problem = h('p', {class: 'error', role: 'alert', hidden: true, id: 'list-error'});
  const refresh = h('button', {type: 'button', class: 'quiet', hidden: true, id: 'list-refresh', onclick: () => load()}, 'Reload this page');
  const prev = h('button', {type: 'button', id: 'prev', onclick: () => go(page - 1)}, '← Previous page');
  const next = h('button', {type: 'button', id: 'next', onclick: () => go(page + 1)}, 'Next page →');
  const pager = h('nav', {class: 'pager', 'aria-label': 'Pages'}, prev, h('span', {id: 'page-no'}), next);

  fill(main, h('h1', {tabindex: -1}, 'Instances'), box, problem,
    h('div', {class: 'list-head'}, status, refresh), h('div', {class: 'scroll'}, table), pager);

  // filters typed in apply themselves after a pause; boxes and selects at once
  let typing = 0;
  for (const el of [prefix, labels]) el.addEventListener('input', () => { clearTimeout(typing); typing = setTimeout(apply, 300); });
  for (const el of [sort, limit, ...boxes.map((b) => b.querySelector('input'))]) el.addEventListener('change', apply);

  function apply() {
    clearTimeout(typing);
    state.statuses = boxes.map((b) => b.querySelector('input')).filter((i) => i.checked).map((i) => i.value);
    state.prefix = prefix.value.trim();
    state.labels = labels.value.trim();
    state.sort = sort.value;
    state.limit = Number(limit.value);
    note();
    // the filters live in the address, so a view can be bookmarked or shared
    const q = new URLSearchParams();
    if (state.statuses.length) q.set('status', state.statuses.join(','));
    if (state.labels) q.set('label', state.labels);
    if (state.prefix) q.set('prefix', state.prefix);
    if (state.sort !== 'status') q.set('sort', state.sort);
    if (state.limit !== 50) q.set('limit', String(state.limit));
    const qs = q.toString();
    history.replaceState(null, '', `#/instances${qs ? `?${qs}` : ''}`);
    cursors = [''];
    go(0);
  }

  function go(i) {
    if (i < 0 || i >= cursors.length) return;
    page = i;
    load();
  }

  function query() {
    const q = new URLSearchParams();
    if (state.statuses.length) q.set('status', state.statuses.join(','));
    for (const l of state.labels.split(',').map((x) => x.trim()).filter(Boolean)) q.append('label', l);
    if (state.prefix) q.set('prefix', state.prefix);
    if (state.sort !== 'id') q.set('sort', state.sort);
    q.set('limit', String(state.limit));
    if (cursors[page]) q.set('cursor', cursors[page]);
    return app.scoped(q);
  }

  async function load() {
    const mine = ++seq;
    if (ctl) ctl.abort();
    ctl = new AbortController();
    const timing = {};
    table.setAttribute('aria-busy', 'true');
    let body;
    try {
      body = await app.call(`/v1/instances?${query()}`, {timing, signal: ctl.signal});
    } catch (err) {
      if (mine !== seq || stopped || err.name === 'AbortError') return;
      table.removeAttribute('aria-busy');
      showError(err);
      return;
    }
    if (mine !== seq || stopped) return;
    const parsed = performance.now();
    clearErrors();
    cursors.length = page + 1;
    if (body.next_cursor) cursors.push(body.next_cursor);
    render(body.instances);
    const built = performance.now();
    changes = 0;
    refresh.hidden = true;
    table.removeAttribute('aria-busy');
    await nextFrame();
    const done = performance.now();
    performance.measure('vigil:instances', {start: timing.arrived, end: done});
    // render: from the whole response being in (JSON parsing included) to
    // the frame that shows it; server: from the request to the headers
    app.timing({view: 'instances', rows: body.instances.length, page, server: timing.headers - timing.sent,
      body: timing.arrived - timing.headers, parse: parsed - timing.arrived, build: built - parsed, render: done - timing.arrived,
      at: Date.now()});
    table.dataset.rendered = String(mine);
  }

  function render(list) {
    rows.clear();
    const now = Date.now();
    const trs = list.map((it) => {
      const hs = it.health_status || {};
      const statusCell = h('td', {'data-label': 'Status'}, badge(hs.status, hs.flapping ? '· flapping' : ''));
      const sinceCell = h('td', {'data-label': 'In status for'}, sinceText(hs.since, now));
      const tr = h('tr', {dataset: {id: it.id, status: hs.status}},
        h('th', {scope: 'row', 'data-label': 'Instance'}, h('a', {href: `#/instances/${encodeURIComponent(it.id)}`}, it.id),
          it.name ? h('span', {class: 'name'}, it.name) : null),
        statusCell, sinceCell,
        h('td', {'data-label': 'Last check'}, time(hs.last_checked_at)),
        h('td', {'data-label': 'Last error', class: 'err'}, hs.reason === 'node_down' || hs.reason === 'node_unreachable'
          ? `${hs.reason} (was ${hs.last_known_status || 'unknown'})` : (hs.last_error || '')),
        app.fleet ? h('td', {'data-label': 'Node'}, it.node || '') : null,
        h('td', {'data-label': 'Labels', class: 'labels'}, Object.entries(it.labels || {}).map(([k, v]) => h('span', {class: 'label'}, `${k}=${v}`))));
      rows.set(it.id, {tr, statusCell, sinceCell, since: hs.since});
      return tr;
    });
    if (!trs.length) {
      trs.push(h('tr', {class: 'empty'}, h('td', {colspan: app.fleet ? 7 : 6}, page === 0 ? 'No instance matches these filters.' : 'No more instances.')));
    }
    fill(tbody, ...trs);
    const first = page * state.limit + 1;
    const shown = list.length ? `${n(first)}–${n(first + list.length - 1)}` : 'none';
    caption.textContent = `Instances, ${SORTS.find(([v]) => v === state.sort)[1].toLowerCase()}`;
    status.textContent = `Page ${page + 1}: ${shown}${totalText()}.`;
    document.getElementById('page-no').textContent = `Page ${page + 1}`;
    prev.disabled = page === 0;
    next.disabled = cursors.length <= page + 1;
  }

  // the total is known from the summary when only statuses filter
  let summary = null;
  function totalText() {
    if (!summary || state.prefix || state.labels) return '';
    const sts = state.statuses.length ? state.statuses : STATUSES;
    return ` of ${n(sts.reduce((a, st) => a + (summary[st] || 0), 0))}`;
  }
  app.call(app.summaryPath()).then((s) => { summary = s; if (!stopped && rows.size) status.textContent = status.textContent.replace(/( of [\d,]+)?\.$/, `${totalText()}.`); }).catch(() => {});

  function sinceText(iso, now) {
    if (!iso) return '—';
    return h('time', {datetime: iso, title: new Date(iso).toISOString()}, span(now - Date.parse(iso)));
  }

  function showError(err) {
    clearErrors();
    if (err instanceof APIError && errors[err.field]) {
      const input = err.field === 'prefix' ? prefix : labels;
      input.setAttribute('aria-invalid', 'true');
      errors[err.field].textContent = err.message;
    }
    problem.hidden = false;
    problem.textContent = `The list could not be read: ${err.message}`;
  }

  function clearErrors() {
    problem.hidden = true;
    for (const [k, el] of Object.entries(errors)) {
      el.textContent = '';
      (k === 'prefix' ? prefix : labels).removeAttribute('aria-invalid');
    }
  }

  // a transition of a row on the page changes it where it is; the order of
  // the page is kept until it is reloaded, so nothing moves under the reader
  const off = app.on((name, ev) => {
    if (name === 'reset') { load(); return; }
    if (name !== 'transition' || !ev) return;
    const row = rows.get(ev.instance_id);
    changes++;
    refresh.hidden = false;
    refresh.textContent = `${n(changes)} transition${changes > 1 ? 's' : ''} since this page loaded: reload it`;
    if (!row) return;
    fill(row.statusCell, badge(ev.to));
    row.tr.dataset.status = ev.to;
    row.since = ev.at;
    fill(row.sinceCell, sinceText(ev.at, Date.now()));
    row.tr.classList.remove('changed');
    void row.tr.offsetWidth; // restart the highlight
    row.tr.classList.add('changed');
  });
  const ticker = setInterval(() => {
    const now = Date.now();
    for (const row of rows.values()) if (row.since) fill(row.sinceCell, sinceText(row.since, now));
  }, 15_000);

  load();
  return () => {
    stopped = true;
    off();
    wide.removeEventListener('change', unfold);
    clearInterval(ticker);
    clearTimeout(typing);
    if (ctl) ctl.abort();
  };
}
