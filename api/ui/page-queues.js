// Queues: tasks by state, the processing rate, and pause / resume (admin scope).

import { get, post } from './api.js';
import { announce, errorBox, fmtNumber, fmtRate, h, replaceKeepingFocus, table } from './dom.js';

const COLUMNS = ['READY', 'RUNNING', 'SCHEDULED', 'RETRYING', 'SUCCEEDED', 'DEAD', 'CANCELLED'];

export default {
  title: 'Queues',
  mount(root) {
    const message = h('div');
    const body = h('div', null, h('p', null, 'Loading…'));
    let page = null;

    async function toggle(queue) {
      const verb = queue.paused ? 'resume' : 'pause';
      message.replaceChildren();
      try {
        await post(`/queues/${encodeURIComponent(queue.name)}/${verb}`);
      } catch (err) {
        message.replaceChildren(errorBox(err.status === 403
          ? new Error(`${err.message}: pausing and resuming need a token with the admin scope`)
          : err));
        return;
      }
      const done = verb === 'pause'
        ? `Queue ${queue.name} paused: workers stop taking its tasks.`
        : `Queue ${queue.name} resumed: workers take its tasks again.`;
      message.replaceChildren(h('p', { class: 'ok' }, done));
      announce(done);
      await page.refresh();
    }

    function render(queues) {
      return table(`Queues (${queues.length})`, [
        { label: 'Queue', cell: (q) => h('a', { href: `#/tasks?queue=${encodeURIComponent(q.name)}` },
          q.name) },
        { label: 'Status', cell: (q) => h('span', { class: `badge ${q.paused ? 'badge-dead'
          : 'badge-succeeded'}` }, q.paused ? 'paused' : 'running') },
        ...COLUMNS.map((state) => ({ label: state[0] + state.slice(1).toLowerCase(), class: 'num',
          cell: (q) => (q.counts[state] ? h('a', { href: `#/tasks?queue=${encodeURIComponent(
            q.name)}&state=${state}` }, fmtNumber(q.counts[state])) : '0') })),
        { label: 'Total', cell: (q) => fmtNumber(q.total), class: 'num' },
        { label: 'Succeeded per second', cell: (q) => fmtRate(q.succeeded_per_s), class: 'num' },
        { label: 'Action', cell: (q) => h('button', { type: 'button',
          class: q.paused ? 'primary' : 'danger', dataset: { focus: `toggle:${q.name}` },
          'aria-label': `${q.paused ? 'Resume' : 'Pause'} queue ${q.name}`,
          onclick: () => toggle(q) }, q.paused ? 'Resume' : 'Pause') },
      ], queues, { empty: 'No queue is known yet.' });
    }

    root.append(h('h1', null, 'Queues'),
      h('p', { class: 'note' }, 'A paused queue keeps its tasks: the processor still ',
        'dispatches them, and workers stop taking them until it is resumed. Rates are tasks ',
        'that reached SUCCEEDED per second over the last minute.'),
      message, body);
    page = {
      every: 3000,
      async refresh() {
        const data = await get('/queues');
        replaceKeepingFocus(body, render(data.queues));
      },
      showError(err) {
        replaceKeepingFocus(body, errorBox(err));
      },
    };
    return page;
  },
};
