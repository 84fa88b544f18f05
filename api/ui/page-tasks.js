// Tasks: filter by queue, state, name and submission time; one cursor page at a
// time (in task-ID order, oldest first), refreshed while it is on screen.

import { badge, errorBox, h, replaceKeepingFocus, STATES, table, taskLink, time } from './dom.js';
import { cursorPages, filterForm } from './listing.js';

export function taskColumns() {
  return [
    { label: 'Task', cell: (t) => taskLink(t.task_id, `task:${t.task_id}`) },
    { label: 'Name', cell: (t) => h('span', { class: 'mono' }, t.name) },
    { label: 'Queue', cell: (t) => t.queue },
    { label: 'Priority', cell: (t) => String(t.priority), class: 'num' },
    { label: 'State', cell: (t) => badge(t.status) },
    { label: 'Attempt', cell: (t) => `${t.attempt} of ${t.max_attempts}`, class: 'num' },
    { label: 'Submitted', cell: (t) => time(t.submitted_at_ms) },
    { label: 'Updated', cell: (t) => time(t.updated_at_ms) },
  ];
}

export default {
  title: 'Tasks',
  mount(root, route, app) {
    const pages = cursorPages('tasks', route, app.setParams, '/tasks');
    const body = h('div', { class: 'listing' }, h('p', null, 'Loading…'));
    const form = filterForm('tasks', ['queue', 'state', 'name', 'since'], pages.params, {
      states: STATES,
      onApply: (params) => app.setParams('tasks', params),
    });
    root.append(h('h1', null, 'Tasks'), form,
      h('p', { class: 'note' }, 'In task-ID order, oldest first: IDs never change, so paging ',
        'neither skips nor repeats a task. Use "Submitted since" for recent tasks. A name or ',
        'time filter is applied while the replicas scan, so a rare name can take a while.'),
      body);
    const page = {
      every: 3000,
      async refresh() {
        const data = await pages.load();
        replaceKeepingFocus(body,
          table(`Tasks: ${data.items.length} on this page`, taskColumns(), data.items,
            { empty: 'No task matches.' }),
          pages.nav('Task pages'));
      },
      showError(err) {
        replaceKeepingFocus(body, errorBox(err));
      },
    };
    pages.onMove(() => page.refresh().catch(page.showError));
    return page;
  },
};
