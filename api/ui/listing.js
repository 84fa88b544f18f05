// What the task list and the DLQ share: the filter form and cursor paging.
//
// Filters live in the route (#/tasks?queue=..&state=..), so a filtered view can be
// bookmarked; applying them loads the first page. Paging follows the API's
// next_cursor: "Next" moves on, "Previous" goes back through the cursors this
// tab has seen, "First" starts over. Only one page is ever loaded.

import { get } from './api.js';
import { h } from './dom.js';

export const PAGE_SIZES = ['25', '50', '100', '200'];

function pad(n) {
  return String(n).padStart(2, '0');
}

// An ISO time -> the value of a datetime-local input (local time), and back.
function toLocalInput(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T`
    + `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromLocalInput(value) {
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

function field(id, label, control) {
  return h('div', { class: 'field' }, h('label', { for: id }, label), control);
}

function select(id, name, options, value) {
  return h('select', { id, name }, options.map(([v, text]) => h('option',
    { value: v, selected: v === value }, text)));
}

// The filter form; `fields` is a subset of queue, state, name, since.
// onApply(params) gets the new URLSearchParams (cursor dropped).
export function filterForm(prefix, fields, params, { states = [], onApply }) {
  const queue = h('input', { id: `${prefix}-queue`, name: 'queue', value: params.get('queue') || '',
    list: `${prefix}-queues`, autocomplete: 'off', spellcheck: 'false' });
  const queues = h('datalist', { id: `${prefix}-queues` });
  const controls = [];
  if (fields.includes('queue')) controls.push(field(`${prefix}-queue`, 'Queue', [queue, queues]));
  if (fields.includes('state')) {
    controls.push(field(`${prefix}-state`, 'State', select(`${prefix}-state`, 'state',
      [['', 'any'], ...states.map((s) => [s, s])], params.get('state') || '')));
  }
  if (fields.includes('name')) {
    controls.push(field(`${prefix}-name`, 'Task name', h('input', { id: `${prefix}-name`,
      name: 'name', value: params.get('name') || '', autocomplete: 'off', spellcheck: 'false' })));
  }
  if (fields.includes('since')) {
    controls.push(field(`${prefix}-since`, 'Submitted since (your time)', h('input', {
      id: `${prefix}-since`, name: 'since', type: 'datetime-local',
      value: params.get('since') ? toLocalInput(params.get('since')) : '' })));
  }
  controls.push(field(`${prefix}-limit`, 'Per page', select(`${prefix}-limit`, 'limit',
    PAGE_SIZES.map((n) => [n, n]), params.get('limit') || '50')));
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filters' }, controls,
    h('div', { class: 'field actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Apply'),
      h('button', { type: 'reset' }, 'Clear')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = new URLSearchParams();
    for (const [key, value] of data.entries()) {
      const text = String(value).trim();
      if (!text) continue;
      next.set(key, key === 'since' ? fromLocalInput(text) : text);
    }
    onApply(next);
  });
  form.addEventListener('reset', (event) => {
    event.preventDefault();
    onApply(new URLSearchParams());
  });
  // queue names to pick from, read once (the field takes any name too)
  get('/queues').then((data) => {
    queues.replaceChildren(...data.queues.map((q) => h('option', { value: q.name })));
  }).catch(() => {});
  return form;
}

// Cursor paging over one listing endpoint. load() fetches the current page;
// nav() renders First / Previous / Next for the last page loaded.
export function cursorPages(path, route, setParams, endpoint) {
  const params = new URLSearchParams(route.params);
  const seen = []; // cursors of the pages before this one
  let cursor = params.get('cursor') || '';
  let next = null;
  let onMove = () => {};

  function query() {
    const q = Object.fromEntries(params.entries());
    delete q.cursor;
    q.limit = q.limit || '50';
    if (cursor) q.cursor = cursor;
    return q;
  }

  function goTo(to) {
    cursor = to;
    if (cursor) params.set('cursor', cursor);
    else params.delete('cursor');
    setParams(path, params, { push: false });
    onMove();
  }

  return {
    params,
    onMove(fn) { onMove = fn; },
    async load() {
      const page = await get(endpoint, query());
      next = page.next_cursor;
      return page;
    },
    nav(label) {
      const first = !cursor;
      return h('nav', { class: 'pager', 'aria-label': label },
        h('button', { type: 'button', disabled: first, dataset: { focus: 'page-first' },
          onclick: () => { seen.length = 0; goTo(''); } }, 'First page'),
        h('button', { type: 'button', disabled: first, dataset: { focus: 'page-prev' },
          onclick: () => goTo(seen.pop() || '') }, 'Previous page'),
        h('button', { type: 'button', disabled: !next, dataset: { focus: 'page-next' },
          onclick: () => { seen.push(cursor); goTo(next); } }, 'Next page'));
    },
  };
}
