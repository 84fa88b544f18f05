// One task: its state, attempts, payload and result (redacted where sealed), its last
// error, the event history from the log as a timeline, and cancel / redrive.

import { ApiError, get, post } from './api.js';
import { announce, badge, errorBox, fmtDuration, h, jsonBlock, replaceKeepingFocus, TERMINAL,
  time } from './dom.js';

// the fold takes a RedriveRequested from DEAD only (processors/fold/rules.py)
const REDRIVABLE = new Set(['DEAD']);
const MAX_B64_SHOWN = 4096;

function row(label, value) {
  return [h('dt', null, label), h('dd', null, value === null || value === undefined || value === ''
    ? '–' : value)];
}

function summary(t) {
  return h('dl', { class: 'facts' },
    row('State', badge(t.status)),
    row('Name', h('span', { class: 'mono' }, t.name)),
    row('Queue', h('a', { href: `#/tasks?queue=${encodeURIComponent(t.queue)}` }, t.queue)),
    row('Priority', String(t.priority)),
    row('Attempt', `${t.attempt} of ${t.max_attempts}`
      + (t.attempt_base ? ` (counting from ${t.attempt_base} after a redrive)` : '')),
    row('Retries, redrives', `${t.retries}, ${t.redrives}`),
    row('Submitted', time(t.submitted_at_ms)),
    row('Dispatched', time(t.dispatched_at_ms)),
    row('Started', time(t.started_at_ms)),
    row('Finished', time(t.finished_at_ms)),
    row('Due', time(t.due_at_ms)),
    row('Worker', t.worker_id ? h('span', { class: 'mono' }, t.worker_id) : null),
    row('Timeout, lease', `${fmtDuration(t.timeout_ms)}, ${fmtDuration(t.lease_ms)}`),
    row('Idempotency key', t.idempotency_key),
    row('Tags', t.tags.join(', ')),
    row('Cancel reason', t.cancel_reason),
    row('Duplicates, conflicts, rejected events', `${t.duplicates}, ${t.conflicts}, ${t.rejected}`));
}

// payload or result: JSON as text, bytes as base64, sealed ones not at all.
function content(t, name) {
  const sealed = (t.sealed || []).includes(name);
  const ctype = name === 'payload' ? t.content_type : t.result_content_type;
  if (sealed) {
    return h('p', { class: 'sealed' }, `Encrypted: redacted. This replica does not hold the key `
      + `for the ${name}, so the dashboard shows none of it.`);
  }
  const value = t[name];
  const b64 = t[`${name}_b64`];
  const truncated = name === 'result' && t.result_truncated
    ? h('p', { class: 'warn' }, 'The result was cut to the size limit.') : null;
  if (value !== null && value !== undefined) {
    return [jsonBlock(value, `${name} (${ctype})`), truncated];
  }
  if (b64) {
    const shown = b64.length > MAX_B64_SHOWN ? `${b64.slice(0, MAX_B64_SHOWN)}…` : b64;
    return [h('p', { class: 'note' }, `${ctype || 'bytes'}, ${Math.floor((b64.length * 3) / 4)} `
      + 'bytes, shown base64-encoded:'), h('pre', { class: 'json', tabindex: '0',
      'aria-label': `${name} in base64` }, shown), truncated];
  }
  return h('p', { class: 'note' }, name === 'result' ? 'No result.' : 'No payload.');
}

function lastError(t) {
  const e = t.last_error;
  if (!e) return h('p', { class: 'note' }, 'No error.');
  const sealed = (t.sealed || []).filter((f) => f.startsWith('last_error.'));
  return [
    h('p', { class: 'error-text' }, h('strong', null, e.error_type), ': ',
      sealed.includes('last_error.message') ? '(encrypted: redacted)' : e.message),
    h('p', { class: 'note' }, `attempt ${e.attempt}${e.timed_out ? ', timed out' : ''}`),
    e.traceback && !sealed.includes('last_error.traceback')
      ? h('details', null, h('summary', null, 'Traceback'),
        h('pre', { class: 'json', tabindex: '0', 'aria-label': 'traceback' }, e.traceback))
      : null,
  ];
}

function verdict(ev) {
  if (ev.outcome === 'accepted') {
    return [badge(ev.status_before || '–'), ' → ', badge(ev.status_after)];
  }
  const text = ev.reason ? `${ev.outcome}: ${ev.reason}` : ev.outcome;
  return h('span', { class: `outcome outcome-${ev.outcome.toLowerCase()}` }, text);
}

function timeline(history) {
  return h('ol', { class: 'timeline', 'aria-label': 'Events, oldest first' },
    history.events.map((ev) => h('li', { class: `event outcome-${ev.outcome.toLowerCase()}` },
      h('div', { class: 'event-head' },
        h('strong', null, ev.type || 'unreadable record'),
        ev.attempt !== null ? ` attempt ${ev.attempt}` : '',
        ' · ', time(ev.occurred_at_ms ?? ev.timestamp_ms),
        ' · ', h('span', { class: 'mono' }, `p${ev.partition}@${ev.offset}`),
        ev.source ? [' · ', h('span', { class: 'mono' }, ev.source)] : null),
      h('div', null, verdict(ev)),
      ev.decisions.length ? h('div', { class: 'note' }, `then: ${ev.decisions.join(', ')}`) : null,
      Object.keys(ev.fields).length ? h('dl', { class: 'fields' }, Object.entries(ev.fields)
        .map(([k, v]) => [h('dt', null, k), h('dd', null,
          typeof v === 'string' ? v : JSON.stringify(v))])) : null)));
}

export default {
  title: 'Task',
  mount(root, route) {
    const taskId = decodeURIComponent(route.match[1]);
    const message = h('div');
    const actions = h('div', { class: 'actions' });
    const facts = h('section', { 'aria-labelledby': 'task-facts' });
    const data = h('section', { 'aria-labelledby': 'task-data' });
    const hist = h('section', { 'aria-labelledby': 'task-history' },
      h('h2', { id: 'task-history' }, 'Event history'), h('p', null, 'Reading the log…'));
    root.append(h('h1', null, 'Task ', h('span', { class: 'mono' }, taskId)), message, actions,
      facts, data, hist);
    let view = null;
    let historyOf = null; // updated_at_ms the history was read for
    let reading = false;

    async function loadHistory(force) {
      if (reading || (!force && view && historyOf === view.updated_at_ms)) return;
      reading = true;
      const readFor = view ? view.updated_at_ms : null;
      try {
        const history = await get(`/tasks/${encodeURIComponent(taskId)}/history`);
        historyOf = readFor;
        replaceKeepingFocus(hist, h('h2', { id: 'task-history' }, 'Event history'),
          h('p', { class: 'note' }, `${history.events.length} events of this task, read from the `
            + 'log with what the fold made of each.'),
          h('button', { type: 'button', dataset: { focus: 'history-reload' },
            onclick: () => loadHistory(true) }, 'Read again'),
          timeline(history));
      } catch (err) {
        replaceKeepingFocus(hist, h('h2', { id: 'task-history' }, 'Event history'),
          errorBox(err));
      } finally {
        reading = false;
      }
    }

    async function command(verb, body) {
      message.replaceChildren();
      try {
        await post(`/tasks/${encodeURIComponent(taskId)}/${verb}`, body);
      } catch (err) {
        message.replaceChildren(errorBox(err.status === 403
          ? new Error(`${err.message}: ${verb} needs a token with the admin scope`) : err));
        return;
      }
      const done = verb === 'cancel' ? 'Cancellation requested.' : 'Redrive requested.';
      message.replaceChildren(h('p', { class: 'ok' }, `${done} The state changes in a moment.`));
      announce(done);
      await page.refresh();
    }

    function confirmForm(verb, label) {
      const id = `${verb}-reason`;
      const form = h('form', { class: 'confirm', 'aria-label': `${label}: confirm` },
        h('label', { for: id }, 'Reason (recorded in the log)'),
        h('input', { id, name: 'reason', maxlength: '1000', autocomplete: 'off' }),
        h('button', { type: 'submit', class: 'danger', dataset: { focus: `${verb}-confirm` } },
          `Confirm: ${label.toLowerCase()}`),
        h('button', { type: 'button', onclick: () => closeForm(verb) }, 'Keep it'));
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        const reason = new FormData(form).get('reason') || '';
        closeForm(null);
        command(verb, { reason: String(reason) });
      });
      actions.replaceChildren(form);
      form.querySelector('input').focus();
    }

    // Back to the buttons; the keyboard's focus goes to the one that opened the form
    // (Keep it) or, once the command is sent and its button may be gone, the heading.
    function closeForm(verb) {
      actions.replaceChildren();
      renderActions();
      const back = verb && actions.querySelector(`[data-focus="${verb}"]`);
      (back || root.querySelector('h1')).focus();
    }

    function renderActions() {
      if (!view) return;
      const buttons = [];
      if (!TERMINAL.has(view.status)) {
        buttons.push(h('button', { type: 'button', class: 'danger', dataset: { focus: 'cancel' },
          onclick: () => confirmForm('cancel', 'Cancel the task') }, 'Cancel task…'));
      }
      if (REDRIVABLE.has(view.status)) {
        buttons.push(h('button', { type: 'button', class: 'primary', dataset: { focus: 'redrive' },
          onclick: () => confirmForm('redrive', 'Redrive the task') }, 'Redrive…'));
      }
      if (!actions.querySelector('form')) replaceKeepingFocus(actions, buttons);
    }

    const page = {
      every: 2000,
      async refresh() {
        try {
          view = await get(`/tasks/${encodeURIComponent(taskId)}`);
        } catch (err) {
          if (err instanceof ApiError && err.status === 404) {
            replaceKeepingFocus(facts, h('p', { class: 'note' }, 'No such task is known (yet: a ',
              'task just submitted appears in a moment).'));
            return;
          }
          throw err;
        }
        renderActions();
        replaceKeepingFocus(facts, h('h2', { id: 'task-facts' }, 'State'), summary(view));
        replaceKeepingFocus(data, h('h2', { id: 'task-data' }, 'Payload, result and error'),
          h('h3', null, 'Payload'), content(view, 'payload'),
          h('h3', null, 'Result'), content(view, 'result'),
          h('h3', null, 'Last error'), lastError(view));
        loadHistory(false);
      },
      showError(err) {
        message.replaceChildren(errorBox(err));
      },
    };
    return page;
  },
};
