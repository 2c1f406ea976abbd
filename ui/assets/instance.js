// One instance: its policy, status, counters and next check, the history
// of its probes with a sparkline of their durations, its transitions, and
// probe now.
import {stream, APIError} from './api.js';
import {h, fill, s, n, badge, time, relative, span, ms, parseDuration, tail, nextFrame} from './dom.js';

export function instance(app, main, id) {
  const enc = encodeURIComponent(id);
  const title = h('h1', {tabindex: -1}, id);
  const problem = h('p', {class: 'error', role: 'alert', hidden: true, id: 'inst-error'});
  const statusBox = h('div', {class: 'status-box', id: 'inst-status'});
  const probeOut = h('p', {class: 'probe-result', id: 'probe-result', role: 'status', 'aria-live': 'polite'});
  const probeBtn = h('button', {type: 'button', id: 'probe-now', onclick: probeNow}, 'Probe now');
  const policy = h('dl', {class: 'facts', id: 'inst-policy'});
  const counters = h('dl', {class: 'facts', id: 'inst-counters'});
  const spark = h('figure', {class: 'spark', id: 'inst-spark'});
  const history = h('tbody', {id: 'history'});
  const transitions = h('ol', {class: 'feed', id: 'transitions', 'aria-label': 'Transitions of this instance, newest first'});
  const transNote = h('p', {class: 'help', id: 'transitions-note'}, 'Reading the event log…');

  fill(main,
    h('p', {class: 'crumbs'}, h('a', {href: '#/instances'}, '← Instances')),
    title, problem, statusBox,
    h('div', {class: 'probe'}, probeBtn, probeOut),
    h('div', {class: 'columns'},
      h('section', {'aria-labelledby': 'i-policy'}, h('h2', {id: 'i-policy'}, 'Policy'), policy),
      h('section', {'aria-labelledby': 'i-counters'}, h('h2', {id: 'i-counters'}, 'Status and counters'), counters)),
    h('section', {'aria-labelledby': 'i-history'}, h('h2', {id: 'i-history'}, 'Probe history'), spark,
      h('div', {class: 'scroll'}, h('table', {class: 'history'},
        h('caption', {class: 'sr-only'}, 'Probes of this instance, newest first'),
        h('thead', {}, h('tr', {}, h('th', {scope: 'col'}, 'Started'), h('th', {scope: 'col'}, 'Outcome'),
          h('th', {scope: 'col'}, 'Reason'), h('th', {scope: 'col', class: 'numeric'}, 'Duration'), h('th', {scope: 'col', class: 'numeric'}, 'Code'),
          h('th', {scope: 'col'}, 'Output (tail)'))),
        history))),
    h('section', {'aria-labelledby': 'i-trans'}, h('h2', {id: 'i-trans'}, 'Transitions'), transNote, transitions));

  let inst = null; // the instance as GET shows it
  let view = null; // its health_status with history
  let stopped = false;
  let timer = 0;
  let events = null;
  const seen = [];

  async function load() {
    clearTimeout(timer);
    const timing = {};
    try {
      const [i, hs] = await Promise.all([inst ? inst : app.call(`/v1/instances/${enc}`),
        app.call(`/v1/instances/${enc}/health`, {timing})]);
      if (stopped) return;
      inst = i;
      view = hs;
      problem.hidden = true;
      render();
      await nextFrame();
      app.timing({view: 'instance', render: performance.now() - timing.arrived, at: Date.now()});
    } catch (err) {
      if (stopped) return;
      problem.hidden = false;
      problem.textContent = err instanceof APIError && err.status === 404 ? `No instance ${id}.` : `The instance could not be read: ${err.message}`;
      if (err instanceof APIError && err.status === 404) { probeBtn.disabled = true; return; }
    }
    schedule();
  }

  // read again just after the next check is due (between 1 s and 15 s)
  function schedule() {
    clearTimeout(timer);
    if (stopped) return;
    const due = view && view.next_check_at ? Date.parse(view.next_check_at) - Date.now() + 300 : 15_000;
    timer = setTimeout(load, Math.min(Math.max(due, 1000), 15_000));
  }

  function render() {
    const hs = view;
    fill(title, id, inst.name ? h('span', {class: 'name'}, ` ${inst.name}`) : null);
    fill(statusBox,
      badge(hs.status, hs.flapping ? '· flapping' : ''),
      ' ', hs.since ? h('span', {}, 'for ', h('strong', {}, span(Date.now() - Date.parse(hs.since))), ', since ', time(hs.since)) : null,
      hs.reason ? h('span', {class: 'err'}, ` (${hs.reason}${hs.last_known_status ? `, last known ${hs.last_known_status}` : ''})`) : null);
    statusBox.dataset.status = hs.status;

    const pc = inst.health_check;
    const facts = [['State', inst.state], ['Started at', inst.started_at ? time(inst.started_at) : '—']];
    if (inst.node) facts.push(['Node', inst.node]);
    if (inst.network) facts.push(['Address', inst.network.ip]);
    if (inst.vsock) facts.push(['vsock', inst.vsock.socket ? `${inst.vsock.socket}:${inst.vsock.port}` : `cid ${inst.vsock.cid}:${inst.vsock.port}`]);
    if (pc) {
      facts.push(['Probe', pc.type]);
      const spec = pc[pc.type] || {};
      for (const [k, v] of Object.entries(spec)) facts.push([`${pc.type} ${k.replace(/_/g, ' ')}`, typeof v === 'object' ? JSON.stringify(v) : String(v)]);
      facts.push(['Interval', pc.interval], ['Timeout', pc.timeout], ['Start period', pc.start_period],
        ['Failure threshold', n(pc.failure_threshold)], ['Success threshold', n(pc.success_threshold)]);
    } else {
      facts.push(['Probe', 'none: checking is disabled']);
    }
    if (inst.restart_policy && inst.restart_policy.policy && inst.restart_policy.policy !== 'never') facts.push(['Restart', inst.restart_policy.policy]);
    const lbl = Object.entries(inst.labels || {});
    if (lbl.length) facts.push(['Labels', lbl.map(([k, v]) => h('span', {class: 'label'}, `${k}=${v}`))]);
    fill(policy, ...facts.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))));

    const c = [
      ['Consecutive successes', n(hs.consecutive_successes)],
      ['Consecutive failures', n(hs.consecutive_failures)],
      ['Last checked', hs.last_checked_at ? [time(hs.last_checked_at), ` (${relative(hs.last_checked_at)})`] : '—'],
      ['Last success', time(hs.last_success_at)],
      ['Last failure', time(hs.last_failure_at)],
      ['Last error', hs.last_error || '—'],
      ['Next check', hs.next_check_at ? [time(hs.next_check_at), ` (${relative(hs.next_check_at)})`] : 'none scheduled'],
    ];
    if (hs.restart) c.push(['Restart attempts', n(hs.restart.attempts)], ['Restart blocked', hs.restart.blocked_reason || '—']);
    fill(counters, ...c.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))));

    const results = hs.history || [];
    renderSpark(results);
    fill(history, ...results.slice().reverse().map((r) => h('tr', {class: `outcome-${r.outcome}`},
      h('td', {'data-label': 'Started'}, time(r.start)),
      h('td', {'data-label': 'Outcome'}, h('span', {class: `badge out-${r.outcome}`}, r.outcome)),
      h('td', {'data-label': 'Reason'}, r.reason || ''),
      h('td', {'data-label': 'Duration', class: 'numeric'}, ms(parseDuration(r.duration))),
      h('td', {'data-label': 'Code', class: 'numeric'}, r.http_status ?? r.exit_code ?? ''),
      h('td', {'data-label': 'Output (tail)'}, outputTail(r)))));
    if (!results.length) fill(history, h('tr', {}, h('td', {colspan: 6}, 'No probe yet.')));
  }

  function outputTail(r) {
    const text = r.output || r.message || '';
    if (!text) return '';
    return h('code', {title: text.length > 160 ? text : null}, tail(text), r.output_truncated ? ' (truncated)' : '');
  }

  function renderSpark(results) {
    const pts = results.map((r) => ({d: parseDuration(r.duration), r})).filter((p) => Number.isFinite(p.d) && p.r.outcome !== 'skipped');
    if (pts.length < 2) {
      fill(spark, h('figcaption', {}, 'Durations appear after two probes.'));
      return;
    }
    const W = 320, H = 64, pad = 4;
    const max = Math.max(...pts.map((p) => p.d)) || 1;
    const x = (i) => pad + (i * (W - 2 * pad)) / (pts.length - 1);
    const y = (d) => H - pad - (d / max) * (H - 2 * pad);
    const sorted = pts.map((p) => p.d).sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    const fails = pts.filter((p) => p.r.outcome === 'failure').length;
    const summary = `Durations of the last ${pts.length} probes: min ${ms(sorted[0])}, median ${ms(median)}, max ${ms(max)}` +
      (fails ? `; ${fails} failed (marked)` : '');
    const svg = s('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': summary, preserveAspectRatio: 'none', class: 'spark-svg'},
      s('title', {}, summary),
      s('polyline', {points: pts.map((p, i) => `${x(i).toFixed(1)},${y(p.d).toFixed(1)}`).join(' '), class: 'line'}),
      ...pts.map((p, i) => (p.r.outcome === 'failure' ? s('circle', {cx: x(i).toFixed(1), cy: y(p.d).toFixed(1), r: 3, class: 'fail'}) : null)));
    fill(spark, svg, h('figcaption', {}, summary));
  }

  async function probeNow() {
    probeBtn.disabled = true;
    probeBtn.textContent = 'Probing…';
    probeOut.textContent = '';
    try {
      const body = await app.call(`/v1/instances/${enc}/probe`, {method: 'POST'});
      if (stopped) return;
      const r = body.result || {};
      probeOut.dataset.outcome = r.outcome;
      fill(probeOut, h('span', {class: `badge out-${r.outcome}`}, r.outcome),
        r.reason ? ` ${r.reason}` : '', ` in ${ms(parseDuration(r.duration))}`, r.message ? ` — ${r.message}` : '',
        ' · now ', badge(body.health_status.status));
      view = {...view, ...body.health_status, history: view ? view.history : []};
      load();
    } catch (err) {
      if (stopped) return;
      probeOut.dataset.outcome = 'error';
      probeOut.textContent = `Probe now failed: ${err.message}`;
    } finally {
      probeBtn.disabled = false;
      probeBtn.textContent = 'Probe now';
    }
  }

  // its transitions: the retained log from the start, then live. The log
  // of an instance is its owner's: in a fleet, another node's is read there.
  function follow() {
    if (app.fleet && inst && inst.node && app.self && inst.node !== app.self) {
      const owner = app.nodes.find((nd) => nd.name === inst.node);
      fill(transNote, `Its transitions are in the log of node ${inst.node}`,
        owner && owner.api_address ? [': ', h('a', {href: `http://${owner.api_address}/ui/#/instances/${enc}`}, 'open its dashboard')] : '', '.');
      return;
    }
    events = stream(`/v1/events?instance_id=${enc}&since=0`, {
      onEvent(name, data) {
        if (name === 'reset') return;
        if (!data || !data.seq) return;
        seen.unshift(data);
        if (seen.length > 200) seen.length = 200;
        renderTransitions();
        if (name === 'transition' && view && data.at && Date.parse(data.at) > Date.parse(view.since || 0)) load();
      },
      onState(st) {
        if (st === 'live' && !seen.length) transNote.textContent = 'None retained yet.';
      },
    });
  }

  let drawn = false;
  function renderTransitions() {
    if (drawn) return;
    drawn = true;
    queueMicrotask(() => {
      drawn = false;
      transNote.textContent = `${n(seen.length)} retained${seen.length >= 200 ? ' (the newest 200 shown)' : ''}; new ones appear live.`;
      fill(transitions, ...seen.map((ev) => h('li', {dataset: {to: ev.to || '', kind: ev.kind || 'transition'}},
        time(ev.at), ' ', ev.kind && ev.kind !== 'transition' ? ev.kind.replace(/_/g, ' ')
          : [badge(ev.from), h('span', {'aria-hidden': 'true'}, ' → '), h('span', {class: 'sr-only'}, ' to '), badge(ev.to)],
        ev.reason ? h('span', {class: 'reason'}, ` ${ev.reason}`) : null,
        ev.last_error ? h('span', {class: 'err'}, ` ${ev.last_error}`) : null)));
    });
  }

  load().then(() => { if (!stopped) follow(); });
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (events) events.close();
  };
}
