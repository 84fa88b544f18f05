// Dead letters: DEAD tasks with their last error, one cursor page at a time; select
// some and redrive them, or first ask for a dry run (POST /dlq/redrive).

import { post } from './api.js';
import { announce, errorBox, fmtNumber, h, replaceKeepingFocus, table, taskLink,
  time } from './dom.js';
import { cursorPages, filterForm } from './listing.js';

const OUTCOMES = {
  would_redrive: 'would be redriven',
  redriven: 'redriven',
  skipped: 'skipped',
  not_found: 'not found',
  failed: 'failed',
};

function resultPanel(answer) {
  const counts = Object.entries(answer.counts)
    .map(([k, n]) => `${fmtNumber(n)} ${OUTCOMES[k] || k}`).join(', ');
  return h('section', { class: answer.dry_run ? 'panel dry' : 'panel', 'aria-labelledby': 'dlq-result' },
    h('h2', { id: 'dlq-result', tabindex: '-1' },
      answer.dry_run ? 'Dry run: nothing was sent' : 'Redrive sent'),
    h('p', null, counts || 'Nothing selected.'),
    table('Per task', [
      { label: 'Task', cell: (r) => taskLink(r.task_id) },
      { label: 'Outcome', cell: (r) => h('span', { class: `outcome outcome-${r.outcome}` },
        OUTCOMES[r.outcome] || r.outcome) },
      { label: 'Why', cell: (r) => r.message },
    ], answer.results));
}

export default {
  title: 'Dead letters',
  mount(root, route, app) {
    const pages = cursorPages('dlq', route, app.setParams, '/dlq');
    const selected = new Set();
    let items = [];
    const body = h('div', { class: 'listing' }, h('p', null, 'Loading…'));
    const result = h('div');
    const count = h('span', { class: 'selection', 'aria-live': 'polite' }, 'No task selected.');
    const attempts = h('input', { id: 'dlq-attempts', name: 'max_attempts', type: 'number',
      min: '1', max: '1000', inputmode: 'numeric' });
    const reason = h('input', { id: 'dlq-reason', name: 'reason', maxlength: '1000',
      autocomplete: 'off' });
    const dryButton = h('button', { type: 'button', onclick: () => send(true) },
      'Dry run');
    const goButton = h('button', { type: 'button', class: 'primary', onclick: () => send(false) },
      'Redrive selected');

    function updateCount() {
      count.textContent = selected.size ? `${selected.size} selected.` : 'No task selected.';
      dryButton.disabled = selected.size === 0;
      goButton.disabled = selected.size === 0;
    }

    async function send(dryRun) {
      result.replaceChildren();
      const body0 = { task_ids: [...selected], dry_run: dryRun, reason: reason.value };
      if (attempts.value) body0.max_attempts = Number(attempts.value);
      let answer;
      try {
        answer = await post('/dlq/redrive', body0);
      } catch (err) {
        result.replaceChildren(errorBox(err.status === 403
          ? new Error(`${err.message}: redriving needs a token with the admin scope`) : err));
        return;
      }
      result.replaceChildren(resultPanel(answer));
      result.querySelector('h2').focus();
      announce(dryRun ? 'Dry run done; nothing was sent.' : 'Redrive sent.');
      if (!dryRun) {
        for (const r of answer.results) if (r.outcome === 'redriven') selected.delete(r.task_id);
        updateCount();
        await page.refresh();
      }
    }

    function checkbox(task) {
      return h('input', { type: 'checkbox', checked: selected.has(task.task_id),
        'aria-label': `Select task ${task.task_id}`, dataset: { focus: `check:${task.task_id}` },
        onchange: (event) => {
          if (event.target.checked) selected.add(task.task_id);
          else selected.delete(task.task_id);
          updateCount();
          const all = body.querySelector('[data-focus="check-all"]');
          if (all) all.checked = items.every((t) => selected.has(t.task_id));
        } });
    }

    function render(data) {
      items = data.items;
      const all = items.length > 0 && items.every((t) => selected.has(t.task_id));
      const selectAll = h('input', { type: 'checkbox', checked: all, dataset: { focus: 'check-all' },
        'aria-label': 'Select every task on this page', onchange: (event) => {
          for (const t of items) {
            if (event.target.checked) selected.add(t.task_id);
            else selected.delete(t.task_id);
          }
          updateCount();
          replaceKeepingFocus(body, render(data));
        } });
      return [
        table(`Dead tasks: ${items.length} on this page`, [
          { label: selectAll, cell: checkbox, class: 'select' },
          { label: 'Task', cell: (t) => taskLink(t.task_id, `task:${t.task_id}`) },
          { label: 'Name', cell: (t) => h('span', { class: 'mono' }, t.name) },
          { label: 'Queue', cell: (t) => t.queue },
          { label: 'Attempts', cell: (t) => String(t.attempt), class: 'num' },
          { label: 'Last error', cell: (t) => (t.last_error
            ? [h('strong', null, t.last_error.error_type), `: ${t.last_error.message}`] : '–') },
          { label: 'Died', cell: (t) => time(t.finished_at_ms) },
        ], items, { empty: 'The dead-letter list is empty.' }),
        pages.nav('Dead-letter pages'),
      ];
    }

    const form = filterForm('dlq', ['queue', 'name', 'since'], pages.params, {
      onApply: (params) => app.setParams('dlq', params),
    });
    root.append(h('h1', null, 'Dead letters'), form,
      h('section', { class: 'toolbar', 'aria-label': 'Redrive' },
        count,
        h('div', { class: 'field' }, h('label', { for: 'dlq-attempts' },
          'Fresh attempt budget (optional)'), attempts),
        h('div', { class: 'field' }, h('label', { for: 'dlq-reason' }, 'Reason'), reason),
        dryButton, goButton),
      result, body);
    updateCount();
    const page = {
      every: 5000,
      async refresh() {
        replaceKeepingFocus(body, render(await pages.load()));
      },
      showError(err) {
        replaceKeepingFocus(body, errorBox(err));
      },
    };
    pages.onMove(() => page.refresh().catch(page.showError));
    return page;
  },
};
