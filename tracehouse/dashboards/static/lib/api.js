// The UI's only way to data: the public HTTP API under /api/v1 (and /openapi.json, to learn
// which optional endpoints this server offers before asking them).

export class ApiError extends Error {
  constructor(status, path, message) {
    super(message);
    this.status = status;
    this.path = path;
  }
}

/** The URL of an API path with query parameters; arrays repeat, empty values are left out. */
export function apiUrl(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item === undefined || item === null || item === "") continue;
      query.append(key, String(item));
    }
  }
  const text = query.toString();
  return `${path}${text ? `?${text}` : ""}`;
}

// A query token, when the server wants one (access file): kept for this browser tab only, never
// in the URL, sent as `Authorization: Bearer`.
const TOKEN_KEY = "tracehouse.token";

export function token() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** GET (or another method) a JSON answer; throws ApiError with the API's own message. A 401
 * also fires `tracehouse:unauthorized` on window, so the shell can ask for a token once. */
export async function api(path, params = {}, { method = "GET" } = {}) {
  const url = apiUrl(path, params);
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  let response;
  try {
    response = await fetch(url, { method, headers });
  } catch (error) {
    throw new ApiError(0, url, `cannot reach the tracehouse API (${error.message}); is the server running?`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("tracehouse:unauthorized", { detail: errorMessage(body, text, response) }));
  if (!response.ok) throw new ApiError(response.status, url, errorMessage(body, text, response));
  return body;
}

function errorMessage(body, text, response) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    // FastAPI's validation shape: name the parameter, as the API does.
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "query" && p !== "path").join(".") || "request"}: ${d.msg}`).join("; ");
  }
  if (typeof detail === "string") return detail;
  if (body && typeof body.message === "string") return body.message;
  return text ? text.slice(0, 300) : response.statusText || "no answer body";
}

let paths = null;

/**
 * Whether this server offers an API path, from its OpenAPI document (fetched once). When that
 * document cannot be read, the answer is true: the caller asks the endpoint itself and treats a
 * 404 as "not offered".
 */
export async function hasPath(path) {
  if (!paths) {
    paths = api("/openapi.json").then(
      (doc) => new Set(Object.keys((doc && doc.paths) || {})),
      () => {
        paths = null; // ask again next time
        return null;
      },
    );
  }
  const known = await paths;
  return known === null ? true : known.has(path);
}

/**
 * Slow services by name from GET /api/v1/slow-services, or null when this server has no such
 * endpoint (or answers 404): the UI then simply marks nothing as slow.
 */
export async function slowServices(window) {
  if (!(await hasPath("/api/v1/slow-services"))) return null;
  try {
    const body = await api("/api/v1/slow-services", window);
    const byService = new Map();
    for (const item of (body && body.items) || []) {
      if (!byService.has(item.service)) byService.set(item.service, item);
    }
    return byService;
  } catch (error) {
    if (error.status === 404) return null;
    throw error;
  }
}

/** Run async jobs with at most `limit` in flight (the API shares one ClickHouse client). */
export async function pool(jobs, limit = 3) {
  const results = new Array(jobs.length);
  let next = 0;
  async function worker() {
    while (next < jobs.length) {
      const i = next++;
      results[i] = await jobs[i]();
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
  return results;
}
