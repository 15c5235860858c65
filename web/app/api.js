// The API client: login, silent refresh (the refresh token rotates on every use and is kept in
// sessionStorage so a reload stays logged in; the access token only in memory), and fetch with
// the bearer header. Every call is one a script could make: there are no private endpoints.

const REFRESH_KEY = 'gps.refresh';

/** The permissions of each role (as `gps_domain::auth::Role::permissions`, which a browser test
 * compares): what the UI offers. */
export const ROLE_PERMISSIONS = {
  admin: ['users:read', 'users:write', 'roles:write', 'keys:read', 'keys:write', 'devices:read', 'devices:write',
    'groups:read', 'groups:write', 'audit:read', 'positions:read', 'positions:export', 'live:read', 'fixes:write',
    'geofences:read', 'geofences:write', 'events:read', 'webhooks:write'],
  manager: ['devices:read', 'devices:write', 'groups:read', 'groups:write', 'positions:read', 'positions:export', 'live:read',
    'geofences:read', 'geofences:write', 'events:read', 'webhooks:write'],
  analyst: ['devices:read', 'groups:read', 'positions:read', 'positions:export', 'live:read', 'geofences:read', 'events:read'],
  viewer: ['devices:read', 'groups:read', 'positions:read', 'live:read', 'geofences:read', 'events:read'],
};

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export const session = {
  access: null,
  role: null,
  email: null,
  listeners: new Set(),
  timer: null,
  /** Whether the current role grants a permission (the API checks again on every call). */
  can(permission) {
    return (ROLE_PERMISSIONS[this.role] || []).includes(permission);
  },
  onChange(f) { this.listeners.add(f); },
};

function accept(body) {
  session.access = body.access_token;
  session.role = body.role;
  sessionStorage.setItem(REFRESH_KEY, body.refresh_token);
  clearTimeout(session.timer);
  // Refresh a minute before expiry (or halfway for short lifetimes).
  const lead = Math.min(60, body.expires_in / 2);
  session.timer = setTimeout(() => refresh().catch(() => {}), (body.expires_in - lead) * 1000);
  for (const f of session.listeners) f(true);
}

async function errorOf(response) {
  let body = {};
  try { body = await response.json(); } catch { /* not JSON */ }
  const e = body.error || {};
  return new ApiError(response.status, e.code, e.message, e.field);
}

/** Log in; `tenant` (name or id) is needed only when the email and password fit accounts of
 * several tenants (the API answers 400 `tenant_required`). */
export async function login(email, password, tenant) {
  const request = tenant ? { email, password, tenant } : { email, password };
  const response = await fetch('/v1/auth/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(request),
  });
  if (!response.ok) throw await errorOf(response);
  session.email = email;
  accept(await response.json());
}

let refreshing = null;
/** Exchange the refresh token (one exchange at a time); false when there is none or it was refused. */
export function refresh() {
  if (refreshing) return refreshing;
  const token = sessionStorage.getItem(REFRESH_KEY);
  if (!token) return Promise.resolve(false);
  refreshing = (async () => {
    try {
      const response = await fetch('/v1/auth/refresh', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ refresh_token: token }),
      });
      if (response.status === 401 || response.status === 400) { forget(); return false; }
      if (!response.ok) throw await errorOf(response);
      accept(await response.json());
      return true;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

function forget() {
  clearTimeout(session.timer);
  session.access = null;
  session.role = null;
  sessionStorage.removeItem(REFRESH_KEY);
  for (const f of session.listeners) f(false);
}

export async function logout() {
  const token = sessionStorage.getItem(REFRESH_KEY);
  if (token && session.access) {
    await fetch('/v1/auth/logout', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${session.access}` },
      body: JSON.stringify({ refresh_token: token }),
    }).catch(() => {});
  }
  forget();
}

/** fetch with the bearer header; a 401 refreshes once and retries. Non-2xx throws ApiError. */
export async function call(path, { method = 'GET', body, accept: type } = {}) {
  const attempt = () => {
    const headers = { authorization: `Bearer ${session.access}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (type) headers.accept = type;
    return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  };
  let response = await attempt();
  if (response.status === 401 && await refresh()) response = await attempt();
  if (response.status === 401) forget();
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function json(path, options) {
  return (await call(path, options)).json();
}
