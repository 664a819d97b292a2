// The one way the console talks to the server: the public JSON API on the page's own origin, with the
// signed-in key as `Authorization: Bearer`, bodies as `application/json`, and OpenAI's error envelope
// turned into an ApiError that carries the server's own message.

const KEY = "stillroom.apiKey";
const PROJECT = "stillroom.project";

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `The server answered ${status}.`);
    this.status = status;
    this.type = error?.type || null;
    this.code = error?.code || null;
    this.param = error?.param || null;
    this.title = status === 0 ? "Network error" : `${status} ${error?.type || "error"}`;
  }
}

// What the server told the console at sign-in: whether it needs a key, the models it routes, and who the
// signed-in principal is (GET /v1/me: project, role, actions; null on a server without that route).
export const server = { open: false, models: [], me: null };

// Whether the signed-in principal holds an action ("stored-completions/action", "inference", "admin", ...).
export function can(action) {
  return !server.me || server.me.actions.includes(action);
}

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set key(value) {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  },
  get project() { return sessionStorage.getItem(PROJECT); },
  set project(value) {
    if (value) sessionStorage.setItem(PROJECT, value);
    else sessionStorage.removeItem(PROJECT);
  },
};

function url(path, query) {
  const target = new URL(`v1/${path}`, document.baseURI);
  for (const [name, value] of query || []) {
    if (value !== undefined && value !== null && value !== "") target.searchParams.append(name, value);
  }
  return target;
}

async function send(path, { method = "GET", body, query, key = session.key } = {}) {
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (session.project) headers["OpenAI-Project"] = session.project;
  const init = { method, headers, credentials: "omit", cache: "no-store", redirect: "error" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    return await fetch(url(path, query), init);
  } catch (cause) {
    throw new ApiError(0, { message: `Could not reach the server (${cause.message}).` });
  }
}

// The raw response of a route that answers bytes (file content); an error envelope still throws.
export async function fetchRaw(path, options = {}) {
  const response = await send(path, options);
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    throw new ApiError(response.status, data?.error);
  }
  return response;
}

// `query` is a list of [name, value] pairs (metadata filters repeat the `metadata[...]` form).
export async function api(path, options = {}) {
  const response = await send(path, options);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data?.error);
  return data;
}

// Every page of a list endpoint, following `after` until `has_more` is false.
export async function listAll(path, query = []) {
  const items = [];
  let after = null;
  for (;;) {
    const page = await api(path, { query: [...query, ["limit", "100"], ["after", after]] });
    items.push(...page.data);
    if (!page.has_more || !page.data.length) return items;
    after = page.last_id;
  }
}

// Whether a route exists on this server (a 404 envelope from an unknown path means it has not landed).
export async function hasRoute(path) {
  try {
    await api(path, { query: [["limit", "1"]] });
    return true;
  } catch (error) {
    return !(error.status === 404 && /^Invalid URL/.test(error.message));
  }
}

// Save a file the API serves (the key goes in a header, so a plain link cannot fetch it).
export async function download(path, query, filename) {
  const blob = await (await fetchRaw(path, { query })).blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}
