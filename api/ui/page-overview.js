// Overview: live throughput and latency, queue depth by priority, the DLQ's size,
// the processors with their partitions, and the workers.

import { ApiError, get } from './api.js';
import { bar, lineChart } from './chart.js';
import { errorBox, fmtNumber, fmtRate, h, replaceKeepingFocus, table } from './dom.js';
import { loadWorkers } from './page-workers.js';

const THROUGHPUT = [
  ['submitted', 'Submitted'],
  ['started', 'Started'],
  ['succeeded', 'Succeeded'],
  ['failed', 'Failed'],
];
const WAITING = ['READY', 'SCHEDULED', 'RETRYING', 'WAITING'];

function totals(queues) {
  const byState = {};
  let rate = 0;
  let measured = false;
  for (const q of queues) {
    for (const [state, n] of Object.entries(q.counts)) byState[state] = (byState[state] || 0) + n;
    if (q.succeeded_per_s !== null) {
      rate += q.succeeded_per_s;
      measured = true;
    }
  }
  return { byState, rate: measured ? rate : null };
}

function cards(queues) {
  const { byState, rate } = totals(queues);
  const card = (label, value, href, cls) => h('div', { class: `card ${cls || ''}` },
    h('dt', null, label),
    h('dd', null, href ? h('a', { href }, value) : value));
  return h('dl', { class: 'cards' },
    card('Ready (waiting for a worker)', fmtNumber(byState.READY || 0), '#/tasks?state=READY'),
    card('Running', fmtNumber(byState.RUNNING || 0), '#/tasks?state=RUNNING'),
    card('Scheduled or retrying', fmtNumber((byState.SCHEDULED || 0) + (byState.RETRYING || 0))),
    card('Succeeded per second (last minute)', fmtRate(rate)),
    card('Dead letters', fmtNumber(byState.DEAD || 0), '#/dlq',
      byState.DEAD ? 'card-alert' : ''),
    card('Queues', fmtNumber(queues.length), '#/queues'));
}

function charts(activity) {
  const points = activity.points;
  const times = points.map((p) => p.t_ms);
  const throughput = lineChart({
    title: 'Throughput (events folded per second, all replicas)',
    unit: '/s',
    times,
    series: THROUGHPUT.map(([key, name]) => ({ key, name,
      values: points.map((p) => (p.rates ? p.rates[key] : null)) })),
  });
  const latency = lineChart({
    title: 'Dispatch latency (event to dispatch, milliseconds)',
    unit: 'ms',
    times,
    // the histogram's top bound: a quantile there means "at least this"
    format: (v) => `${activity.latency_max_ms !== null && v >= activity.latency_max_ms ? '≥ ' : ''}`
      + `${v >= 100 ? String(Math.round(v)) : v.toFixed(1)}`,
    series: [['p50', 'p50'], ['p99', 'p99']].map(([key, name]) => ({ key, name,
      values: points.map((p) => p.latency_ms[key]) })),
  });
  const note = activity.unanswered.length
    ? h('p', { class: 'warn' }, `Replicas that did not answer: ${activity.unanswered.join(', ')}`)
    : null;
  return [h('div', { class: 'charts' }, throughput, latency), note];
}

function depthTable(queues) {
  const rows = [];
  for (const q of queues) {
    for (const [level, counts] of Object.entries(q.by_priority)) {
      rows.push({ queue: q.name, level, paused: q.paused, counts,
        waiting: WAITING.reduce((n, s) => n + (counts[s] || 0), 0) });
    }
  }
  rows.sort((a, b) => a.queue.localeCompare(b.queue) || Number(b.level) - Number(a.level));
  const max = Math.max(1, ...rows.map((r) => r.counts.READY || 0));
  return table('Queue depth by priority (higher priority first)', [
    { label: 'Queue', cell: (r) => [h('a', { href: `#/tasks?queue=${encodeURIComponent(r.queue)}` },
      r.queue), r.paused ? h('span', { class: 'tag' }, 'paused') : null] },
    { label: 'Priority', cell: (r) => r.level, class: 'num' },
    { label: 'Ready', cell: (r) => h('span', { class: 'with-bar' }, bar(r.counts.READY || 0, max),
      fmtNumber(r.counts.READY || 0)), class: 'num' },
    { label: 'Running', cell: (r) => fmtNumber(r.counts.RUNNING || 0), class: 'num' },
    { label: 'Scheduled or retrying', class: 'num',
      cell: (r) => fmtNumber((r.counts.SCHEDULED || 0) + (r.counts.RETRYING || 0)) },
    { label: 'Dead', cell: (r) => fmtNumber(r.counts.DEAD || 0), class: 'num' },
  ], rows, { empty: 'No tasks yet.' });
}

function partitionList(partitions) {
  return partitions.length ? partitions.join(', ') : 'none';
}

function processorsTable(info) {
  const rows = info.processors;
  const caption = `Processors (${rows.length}) and their partitions of ${info.partitions}`;
  const out = [table(caption, [
    { label: 'Replica', cell: (r) => h('span', { class: 'mono' }, r.url) },
    { label: 'State', cell: (r) => (r.error ? h('span', { class: 'badge badge-dead' }, 'no answer')
      : h('span', { class: `badge ${r.ready && !r.rebalancing ? 'badge-succeeded' : 'badge-running'}` },
        r.ready ? (r.rebalancing ? 'rebalancing' : 'ready') : 'restoring')) },
    { label: 'Active partitions', cell: (r) => (r.error ? r.error : partitionList(r.active)) },
    { label: 'Standby partitions', cell: (r) => (r.error ? '' : partitionList(r.standby)) },
  ], rows)];
  if (info.unowned.length) {
    out.push(h('p', { class: 'warn' }, `Partitions no replica folds right now: `
      + `${info.unowned.join(', ')} (a rebalance or failover is under way).`));
  }
  return out;
}

function workersSummary(result) {
  if (result.kind === 'roster') {
    const counts = {};
    for (const w of result.workers) counts[w.status] = (counts[w.status] || 0) + 1;
    const parts = Object.entries(counts).map(([k, n]) => `${n} ${k}`);
    const n = result.workers.length;
    return h('p', null, `${n} worker${n === 1 ? '' : 's'} announced`
      + `${parts.length ? ` (${parts.join(', ')})` : ''}. `, h('a', { href: '#/workers' },
      'See the workers.'));
  }
  const busy = result.workers.length;
  return h('p', null, `${busy} worker${busy === 1 ? '' : 's'} running tasks now. `,
    h('a', { href: '#/workers' }, 'See the workers.'));
}

export default {
  title: 'Overview',
  mount(root) {
    const charts$ = h('section', { 'aria-labelledby': 'ov-live' },
      h('h2', { id: 'ov-live' }, 'Live'), h('p', null, 'Loading…'));
    const cards$ = h('section', { 'aria-label': 'Totals' });
    const depth$ = h('section', { 'aria-labelledby': 'ov-depth' });
    const procs$ = h('section', { 'aria-labelledby': 'ov-procs' });
    const workers$ = h('section', { 'aria-labelledby': 'ov-workers' });
    const status$ = h('div');
    root.append(h('h1', null, 'Overview'), status$, cards$, charts$, depth$, procs$, workers$);
    return {
      every: 2000,
      async refresh() {
        const [queues, activity, processors, workers] = await Promise.all([
          get('/queues'), get('/activity'), get('/processors'),
          loadWorkers().catch((err) => ({ kind: 'error', err }))]);
        status$.replaceChildren();
        replaceKeepingFocus(cards$, cards(queues.queues));
        replaceKeepingFocus(charts$, h('h2', { id: 'ov-live' }, 'Live'), charts(activity));
        replaceKeepingFocus(depth$, h('h2', { id: 'ov-depth' }, 'Queue depth'),
          depthTable(queues.queues));
        replaceKeepingFocus(procs$, h('h2', { id: 'ov-procs' }, 'Processors'),
          processorsTable(processors));
        replaceKeepingFocus(workers$, h('h2', { id: 'ov-workers' }, 'Workers'),
          workers.kind === 'error' ? errorBox(workers.err) : workersSummary(workers));
      },
      showError(err) {
        status$.replaceChildren(errorBox(err instanceof ApiError && err.status === 503
          ? new Error(`${err.message} (the page keeps trying)`) : err));
      },
    };
  },
};
