// Workers: the roster from GET /workers (heartbeats on the workers topic) where the
// platform has it; without it, the workers that RUNNING tasks name (one bounded
// page of RUNNING tasks), and a note saying what is missing.

import { apiPaths, get } from './api.js';
import { errorBox, fmtAgo, fmtNumber, h, replaceKeepingFocus, table, time } from './dom.js';

// how many RUNNING tasks the fallback reads at most (one page of the listing)
const RUNNING_PAGE = 1000;

export async function loadWorkers() {
  if ((await apiPaths()).has('/workers')) {
    const data = await get('/workers');
    return { kind: 'roster', workers: data.workers };
  }
  const page = await get('/tasks', { state: 'RUNNING', limit: RUNNING_PAGE });
  const byWorker = new Map();
  for (const task of page.items) {
    const id = task.worker_id || '(not named)';
    const row = byWorker.get(id) || { worker_id: id, running: 0, queues: new Set(),
      since: null };
    row.running += 1;
    row.queues.add(task.queue);
    if (task.started_at_ms && (row.since === null || task.started_at_ms < row.since)) {
      row.since = task.started_at_ms;
    }
    byWorker.set(id, row);
  }
  return { kind: 'running', workers: [...byWorker.values()], more: page.next_cursor !== null };
}

function rosterTable(workers) {
  return table(`Workers (${workers.length})`, [
    { label: 'Worker', cell: (w) => h('span', { class: 'mono' }, w.worker_id) },
    { label: 'Host and PID', cell: (w) => `${w.host} (${w.pid})` },
    { label: 'Queues', cell: (w) => w.queues.join(', ') },
    { label: 'Status', cell: (w) => h('span', { class: `badge badge-${w.status === 'running'
      ? 'succeeded' : w.status === 'lost' ? 'dead' : 'cancelled'}` }, w.status) },
    { label: 'In flight / concurrency', cell: (w) => `${w.in_flight} / ${w.concurrency}`,
      class: 'num' },
    { label: 'Succeeded / failed', class: 'num',
      cell: (w) => `${fmtNumber(w.tasks_succeeded)} / ${fmtNumber(w.tasks_failed)}` },
    { label: 'Started', cell: (w) => time(w.started_at_ms) },
    { label: 'Last heartbeat', cell: (w) => fmtAgo(w.heartbeat_at_ms) },
  ], workers, { empty: 'No worker has announced itself.' });
}

function runningTable(result) {
  const rows = result.workers.sort((a, b) => b.running - a.running);
  return [
    h('p', { class: 'note' }, 'This platform has no worker roster (GET /workers, which comes ',
      'with worker heartbeats). Shown instead: the workers that running tasks name. ',
      'An idle worker does not appear here.'),
    table(`Workers running tasks (${rows.length})`, [
      { label: 'Worker', cell: (w) => h('span', { class: 'mono' }, w.worker_id) },
      { label: 'Running tasks', cell: (w) => h('a', { href: '#/tasks?state=RUNNING' },
        fmtNumber(w.running)), class: 'num' },
      { label: 'Queues', cell: (w) => [...w.queues].sort().join(', ') },
      { label: 'Longest running since', cell: (w) => time(w.since) },
    ], rows, { empty: 'No task is running now.' }),
    result.more ? h('p', { class: 'note' }, `Counted from the first ${RUNNING_PAGE} running `
      + 'tasks only.') : null,
  ];
}

export default {
  title: 'Workers',
  mount(root) {
    const body = h('div', null, h('p', null, 'Loading…'));
    root.append(h('h1', null, 'Workers'), body);
    return {
      every: 3000,
      async refresh() {
        const result = await loadWorkers();
        replaceKeepingFocus(body, result.kind === 'roster' ? rosterTable(result.workers)
          : runningTable(result));
      },
      showError(err) {
        replaceKeepingFocus(body, errorBox(err));
      },
    };
  },
};
