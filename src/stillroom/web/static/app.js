// The console's entry: who is signed in, which view the URL's hash names, and the sign-in form.

import { api, ApiError, server as state, session } from "./api.js";
import { errorBox, field, h } from "./dom.js";
import { canAdminister, renderAdmin } from "./admin.js";
import { renderCompletionDetail, renderCompletions } from "./completions.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOut = document.getElementById("sign-out");

// A key is good for the console when it may read stored completions (an inference-only key may not).
// GET /v1/me says what else it may do, so the console shows only that.
async function checkKey(key) {
  const models = await api("models", { key });
  await api("chat/completions", { query: [["limit", "1"]], key });
  try {
    state.me = await api("me", { key });
  } catch (error) {
    if (error.status !== 404) throw error;
    state.me = null; // an older server: show everything, and let the API refuse
  }
  return models.data.map((m) => m.id);
}

// The wizards, job and run pages load on first use, so a cold load stays small.
const LAZY = {
  distill: ["./distill.js", (m, view, parts, params) => m.renderDistill(view, params)],
  evaluate: ["./evaluate.js", (m, view, parts, params) => m.renderEvaluate(view, params)],
  jobs: ["./jobs.js", (m, view, parts) => (parts[1] ? m.renderJob(view, decodeURIComponent(parts[1])) : m.renderJobs(view))],
  evals: ["./runs.js", (m, view, parts) => (parts[3]
    ? m.renderRun(view, decodeURIComponent(parts[1]), decodeURIComponent(parts[3])) : m.renderEvals(view))],
};

async function resolveSession() {
  try {
    state.models = await checkKey(session.key);
    state.open = !session.key;
    return true;
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      // A key or token that was good and is not any more (revoked, expired): forget it and say why.
      // Without one, a 401 only means this server needs one.
      const had = Boolean(session.key);
      if (had) session.key = null;
      return had || error.status === 403 ? error : false;
    }
    throw error;
  }
}

function renderSignIn(problem) {
  const input = h("input", { type: "password", name: "key", autocomplete: "off", required: true, spellcheck: "false" });
  const errors = h("div");
  if (problem instanceof ApiError) errors.append(errorBox(problem));
  const form = h("form.card.signin", { "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title", tabindex: "-1" }, "Sign in"),
    h("p", "This server needs an API key or an identity-provider token. It is kept in this tab only (session storage) and sent as ",
      h("code", "Authorization: Bearer"), "."),
    field("API key or token", input, "A project key with read access, the server key, or an OIDC token (a JWT) whose roles may read."),
    errors,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    errors.replaceChildren();
    try {
      state.models = await checkKey(key);
      session.key = key;
      state.open = false;
      if (location.hash.startsWith("#/signin")) location.hash = "#/completions";
      else route();
    } catch (error) {
      errors.append(errorBox(error));
      input.focus();
    }
  });
  view.replaceChildren(form);
  input.focus();
}

async function renderChrome() {
  nav.hidden = false;
  signOut.hidden = state.open;
  who.textContent = state.open ? "Laptop mode: no key needed" : "Signed in";
  if (state.me?.role && !state.open) who.textContent += ` as ${state.me.role}`;
  const project = session.project || (state.me && !state.me.all_projects ? state.me.project_id : null);
  if (project) who.textContent += ` · project ${project}`;
  nav.querySelector('[data-section="admin"]').hidden = !(await canAdminister());
}

function currentSection(hash) {
  for (const link of nav.querySelectorAll("a")) {
    const current = hash.startsWith(`#/${link.dataset.section}`);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

let signedIn = false;

async function route() {
  const hash = location.hash || "#/completions";
  if (!signedIn) {
    let outcome;
    try {
      outcome = await resolveSession();
    } catch (error) {
      view.replaceChildren(errorBox(error));
      return;
    }
    if (outcome !== true) {
      nav.hidden = true;
      signOut.hidden = true;
      who.textContent = "";
      renderSignIn(outcome);
      return;
    }
    signedIn = true;
    await renderChrome();
  }
  currentSection(hash);
  const [path, query = ""] = hash.slice(1).split("?");
  const parts = path.split("/").filter(Boolean);
  const params = new URLSearchParams(query);
  if (LAZY[parts[0]]) {
    const [module, render] = LAZY[parts[0]];
    try {
      await render(await import(module), view, parts, params);
    } catch (error) {
      view.replaceChildren(errorBox(error));
    }
  } else if (parts[0] === "admin") await renderAdmin(view, () => renderChrome());
  else if (parts[0] === "completions" && parts[1]) await renderCompletionDetail(view, decodeURIComponent(parts[1]), params);
  else await renderCompletions(view, params);
}

signOut.addEventListener("click", () => {
  session.key = null;
  session.project = null;
  signedIn = false;
  location.hash = "#/completions";
  route();
});

window.addEventListener("hashchange", route);
// "/" jumps to the filters, Escape leaves a detail view for its list.
document.addEventListener("keydown", (event) => {
  const typing = event.target.closest?.("input, textarea, select, [contenteditable]");
  if (event.key === "/" && !typing) {
    const filter = view.querySelector("form.filters input");
    if (filter) { filter.focus(); event.preventDefault(); }
  } else if (event.key === "Escape" && !typing && !document.querySelector("dialog[open]")) {
    const back = view.querySelector("a.back");
    if (back) location.hash = back.getAttribute("href");
  }
});
// A 401 anywhere later (a revoked key) sends the user back to the sign-in form.
window.addEventListener("stillroom:unauthorized", () => {
  signedIn = false;
  route();
});
route();
