// The dashboard's only way to the platform: the replica's own HTTP API (docs/api.md),
// with the bearer token the user gave, kept in this tab's session storage only.

const TOKEN_KEY = 'taskstream.token';

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// Every 401 tells the shell to ask for a token (app.js listens).
export const UNAUTHENTICATED = 'taskstream:unauthenticated';

export async function call(method, path, { params, body, signal } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, value);
  }
  const headers = { Accept: 'application/json' };
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, signal, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'network', 'the replica did not answer (is it running?)', null);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    if (response.status === 401) window.dispatchEvent(new CustomEvent(UNAUTHENTICATED));
    throw new ApiError(response.status, error.code || `http_${response.status}`,
      error.message || response.statusText || 'request failed', error.field || null);
  }
  return data;
}

export const get = (path, params, signal) => call('GET', path, { params, signal });
export const post = (path, body) => call('POST', path, { body });

// The API's documented paths (GET /openapi.json, read once per page load): pages ask it
// whether an endpoint exists on this platform (GET /workers does not everywhere).
let documented = null;
export function apiPaths() {
  if (documented === null) {
    documented = get('/openapi.json').then((doc) => new Set(Object.keys(doc.paths || {})))
      .catch((err) => {
        documented = null;
        throw err;
      });
  }
  return documented;
}
