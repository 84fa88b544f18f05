// The dashboard's shell: routes (#/...), sign-in with a token, and the polling loop.
//
// A page module exports {title, mount(root, route, app)}; mount builds the page
// and returns {refresh(), every (ms), unmount?()}. The shell calls refresh once,
// then again `every` ms after the previous one finished, while the tab is
// visible and the page is still the current one. Live updates are polling: an
// EventSource cannot send the bearer token, and every answer is one API call.

import { ApiError, get, setToken, token, UNAUTHENTICATED } from './api.js';
import { announce, errorBox, h } from './dom.js';
import dlq from './page-dlq.js';
import overview from './page-overview.js';
import queues from './page-queues.js';
import task from './page-task.js';
import tasks from './page-tasks.js';
import workers from './page-workers.js';

const ROUTES = [
  [/^$/, overview, 'overview'],
  [/^queues$/, queues, 'queues'],
  [/^tasks$/, tasks, 'tasks'],
  [/^tasks\/([^/]+)$/, task, 'tasks'],
  [/^dlq$/, dlq, 'dlq'],
  [/^workers$/, workers, 'workers'],
];

const main = document.getElementById('main');
let generation = 0;
let current = null;
let signingIn = false;
let navigated = false; // a route was shown before (not the first load)

export function parseHash(hash = window.location.hash) {
  const text = hash.startsWith('#/') ? hash.slice(2) : '';
  const [path, query = ''] = text.split('?', 2);
  return { path: path.replace(/\/+$/, ''), params: new URLSearchParams(query) };
}

// Change the route's query without a new history entry per keystroke.
export function setParams(path, params, { push = true } = {}) {
  const query = params.toString();
  const hash = `#/${path}${query ? `?${query}` : ''}`;
  if (push) window.location.hash = hash;
  else window.history.replaceState(null, '', hash);
}

function markNav(name) {
  for (const link of document.querySelectorAll('nav a[data-route]')) {
    if (link.dataset.route === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

async function loop(mine, page) {
  while (mine === generation) {
    let took = 0;
    if (!document.hidden) {
      const started = performance.now();
      try {
        await page.refresh();
        document.getElementById('live').hidden = false;
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return;
        document.getElementById('live').hidden = true;
        page.showError?.(err);
      }
      took = performance.now() - started;
    }
    if (!page.every) return;
    // a slow answer (a rare name scans the whole table) is asked again less often
    await new Promise((resolve) => { window.setTimeout(resolve, Math.max(page.every, 4 * took)); });
  }
}

function route() {
  if (signingIn) return;
  generation += 1;
  const mine = generation;
  current?.unmount?.();
  current = null;
  const { path, params } = parseHash();
  const found = ROUTES.find(([pattern]) => pattern.test(path));
  if (!found) {
    markNav(null);
    main.replaceChildren(h('h1', { tabindex: '-1' }, 'Not found'),
      h('p', null, 'No such page. ', h('a', { href: '#/' }, 'Go to the overview.')));
    main.querySelector('h1').focus();
    return;
  }
  const [pattern, page, nav] = found;
  const match = path.match(pattern);
  markNav(nav);
  document.title = `${page.title} · taskstream`;
  const root = h('div', { class: 'page' });
  main.replaceChildren(root);
  try {
    current = page.mount(root, { path, params, match }, { setParams });
  } catch (err) {
    root.replaceChildren(errorBox(err));
    return;
  }
  // after a move inside the dashboard, focus the new page's heading, so keyboard and
  // screen-reader users start there (on the first load the skip link comes first)
  const heading = root.querySelector('h1');
  if (heading) heading.setAttribute('tabindex', '-1');
  if (heading && navigated) heading.focus({ preventScroll: true });
  navigated = true;
  loop(mine, current);
}

function signIn(message) {
  signingIn = true;
  generation += 1;
  current?.unmount?.();
  current = null;
  markNav(null);
  document.title = 'Sign in · taskstream';
  document.getElementById('signout').hidden = true;
  document.getElementById('live').hidden = true;
  const input = h('input', { id: 'token', name: 'token', type: 'password', required: true,
    autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'token-help' });
  const problem = h('p', { class: 'error', role: 'alert', hidden: !message }, message || '');
  const form = h('form', { class: 'signin', novalidate: true },
    h('h1', { tabindex: '-1' }, 'Sign in'),
    h('p', { id: 'token-help' }, 'This platform asks for an API token. It is kept in this ',
      'browser tab only (session storage) and sent as a bearer token with each API call.'),
    h('label', { for: 'token' }, 'API token'), input, problem,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) {
      problem.hidden = false;
      problem.textContent = 'Enter a token.';
      input.focus();
      return;
    }
    setToken(value);
    try {
      await get('/activity');
    } catch (err) {
      setToken(null);
      problem.hidden = false;
      problem.textContent = err.status === 401 ? 'That token is not known to this platform.'
        : err.message;
      input.focus();
      return;
    }
    signingIn = false;
    document.getElementById('signout').hidden = false;
    announce('Signed in');
    route();
  });
  main.replaceChildren(form);
  input.focus();
}

function start() {
  document.getElementById('skip').addEventListener('click', (event) => {
    event.preventDefault();
    main.focus();
  });
  document.getElementById('signout').addEventListener('click', () => {
    setToken(null);
    announce('Signed out');
    signIn('Signed out. Sign in again to go on.');
  });
  window.addEventListener('hashchange', route);
  window.addEventListener(UNAUTHENTICATED, () => {
    if (!signingIn) signIn(token() ? 'The token was refused. Sign in again.' : null);
  });
  document.getElementById('signout').hidden = !token();
  route();
}

start();
