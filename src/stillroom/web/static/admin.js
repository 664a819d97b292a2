// Administration, for a principal that may list projects (the server key, or laptop mode: with a project
// switcher whose choice is sent as `OpenAI-Project` on every later call), or a project's admin key (its own
// project only): usage against quota, the storage switch, the store policy, API keys (a new key is shown
// once), the audit log.

import { api, ApiError, can, server, session } from "./api.js";
import { confirmDialog, errorBox, field, formatNumber, formatTime, h } from "./dom.js";
import { pairRow } from "./completions.js";

const ROLES = ["reader", "contributor", "inference", "admin"];
const POLICY_MODES = {
  request: "Only requests that send store: true",
  all: "Every request that does not send store",
  sample: "A sample of the requests that do not send store",
};

// Whether this principal may administer a project (GET /v1/me says; on an older server, try listing them).
export async function canAdminister() {
  if (server.me) return server.me.actions.includes("organization") || server.me.actions.includes("admin");
  try {
    await api("organization/projects");
    return true;
  } catch (error) {
    if (error instanceof ApiError && [401, 403, 404].includes(error.status)) return false;
    throw error;
  }
}

function bytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toLocaleString(undefined, { maximumFractionDigits: unit ? 1 : 0 })} ${units[unit]}`;
}

export async function renderAdmin(view, onProjectChange = () => {}) {
  const title = h("h1", { tabindex: "-1", id: "admin-title" }, "Administration");
  const status = h("div.status");
  const body = h("div.admin-body", h("p.muted", "Loading…"));
  view.replaceChildren(h("section.admin", { "aria-labelledby": "admin-title" }, title, status, body));
  let projects;
  try {
    projects = server.me && !server.me.actions.includes("organization")
      ? [await api(`organization/projects/${encodeURIComponent(server.me.project_id)}`)]
      : (await api("organization/projects")).data;
  } catch (error) {
    body.replaceChildren(errorBox(error));
    return;
  }
  const currentId = session.project || projects[0]?.id || "default";
  const project = projects.find((p) => p.id === currentId) || projects[0];
  const switcher = h("select", { name: "project" },
    projects.map((p) => h("option", { value: p.id, selected: p.id === project?.id }, `${p.name || p.id} (${p.id})`)));
  switcher.addEventListener("change", () => {
    session.project = switcher.value;
    onProjectChange();
    renderAdmin(view, onProjectChange);
  });
  body.replaceChildren(h("div.card.switcher", field("Project", switcher,
    "Every page of the console, stored completions included, shows this project.")));
  if (!project) return;
  body.append(projectCard(project, status));
  if (can("admin")) body.append(policyCard(project, status));
  body.append(keysCard(project, status), auditCard(project));
  title.focus();
}

function projectCard(project, status) {
  const used = project.usage_bytes || 0;
  const quota = project.quota_bytes || 0;
  const meter = h("meter", { min: "0", max: String(quota || 1), value: String(used), id: "usage-meter" });
  const storage = h("input", { type: "checkbox", checked: project.storage_enabled });
  storage.addEventListener("change", async () => {
    try {
      await api(`organization/projects/${encodeURIComponent(project.id)}`, {
        method: "POST", body: { storage_enabled: storage.checked },
      });
      status.replaceChildren(h("p.notice", { role: "status" },
        `Storage ${storage.checked ? "enabled" : "disabled"} for ${project.id}.`));
    } catch (error) {
      storage.checked = !storage.checked;
      status.replaceChildren(errorBox(error));
    }
  });
  return h("section.card", { "aria-labelledby": "project-title" },
    h("h2", { id: "project-title" }, project.name || project.id),
    h("dl.summary",
      h("dt", "Id"), h("dd", h("code", project.id)),
      h("dt", "Created"), h("dd", formatTime(project.created_at)),
      h("dt", h("label", { for: "usage-meter" }, "Usage")),
      h("dd", meter, ` ${bytes(used)} of ${bytes(quota)}`),
      h("dt", "Answers not stored"), h("dd", formatNumber(project.not_stored)),
      h("dt", "Store policy"), h("dd", { id: "policy-summary" }, policySummary(project.store_policy)),
      h("dt", "Retention"), h("dd", project.retention_days ? `${project.retention_days} days` : "kept until deleted")),
    h("div.field.switch", h("label", storage, " Store completions in this project"),
      project.storage_enabled && !project.storage_effective
        ? h("small.hint", "The server's own storage switch is off, so nothing is stored anyway.") : null));
}

function policySummary(policy = {}) {
  const pairs = Object.entries(policy.metadata || {}).map(([k, v]) => `${k}=${v}`);
  return [policy.mode || "request", policy.mode === "sample" ? ` (${policy.sample_rate})` : "",
    pairs.length ? `, default metadata ${pairs.join(", ")}` : ""].join("");
}

// Store by policy: what is stored of the traffic that does not send `store` (old SDKs), and the metadata
// added to what is stored. Saved whole with POST /organization/projects/{id} {"store_policy": {...}}; the
// server checks it (the form does not), so a refused value shows the server's message.
function policyCard(project, status) {
  const policy = project.store_policy || {};
  const mode = h("select", { name: "store_policy_mode" },
    Object.entries(POLICY_MODES).map(([value, label]) =>
      h("option", { value, selected: value === (policy.mode || "request") }, `${value}: ${label}`)));
  const rate = h("input", { type: "number", name: "sample_rate", step: "any", value: String(policy.sample_rate ?? 0) });
  const rateField = field("Sample rate", rate, "0 to 1: the share of such requests that is stored.");
  const showRate = () => { rateField.hidden = mode.value !== "sample"; };
  mode.addEventListener("change", showRate);
  showRate();
  const pairs = h("div.pairs", Object.entries(policy.metadata || {}).map(([k, v]) => pairRow(k, v)));
  const errors = h("div");
  const form = h("form.card.policy", { "aria-labelledby": "policy-title", novalidate: true },
    h("h2", { id: "policy-title" }, "Store by policy"),
    field("Store", mode, "A request's own store: true or false always wins."),
    rateField,
    h("fieldset.metadata",
      h("legend", "Default metadata (added to what is stored; a request's own pairs win)"),
      pairs,
      h("button.quiet", { type: "button", onclick: () => { const row = pairRow(); pairs.append(row); row.querySelector("input").focus(); } },
        "Add pair")),
    errors,
    h("div.actions", h("button", { type: "submit" }, "Save store policy")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errors.replaceChildren();
    const metadata = {};
    for (const row of pairs.children) {
      const [k, v] = row.querySelectorAll("input");
      if (k.value.trim()) metadata[k.value.trim()] = v.value;
    }
    const wanted = { mode: mode.value, metadata };
    if (mode.value === "sample") wanted.sample_rate = rate.value.trim() === "" ? null : Number(rate.value);
    try {
      const saved = await api(`organization/projects/${encodeURIComponent(project.id)}`, {
        method: "POST", body: { store_policy: wanted },
      });
      document.getElementById("policy-summary")?.replaceChildren(policySummary(saved.store_policy));
      status.replaceChildren(h("p.notice", { role: "status" }, `Store policy saved for ${project.id}.`));
    } catch (error) {
      errors.replaceChildren(errorBox(error));
    }
  });
  return form;
}

function keysCard(project, status) {
  const base = `organization/projects/${encodeURIComponent(project.id)}/api_keys`;
  const list = h("tbody");
  const shown = h("div");
  const name = h("input", { type: "text", name: "name", maxlength: "256" });
  const role = h("select", { name: "role" }, ROLES.map((r) => h("option", { value: r, selected: r === "contributor" }, r)));
  const load = async () => {
    try {
      const keys = (await api(base)).data;
      list.replaceChildren(...keys.map((key) => h("tr",
        h("td", key.name || h("span.muted", "—")), h("td", h("code", key.redacted_value)), h("td", key.role),
        h("td", formatTime(key.created_at)), h("td", key.last_used_at ? formatTime(key.last_used_at) : "never"),
        h("td", h("button.danger", { type: "button", "aria-label": `Revoke ${key.name || key.redacted_value}`,
          onclick: () => revoke(key) }, "Revoke")))));
      if (!keys.length) list.append(h("tr.empty", h("td", { colspan: 6 }, "No keys in this project yet.")));
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  };
  const revoke = async (key) => {
    if (!(await confirmDialog(`Revoke ${key.redacted_value}?`, "Clients using it are refused at once.", "Revoke"))) return;
    try {
      await api(`${base}/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      shown.replaceChildren();
      await load();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  };
  const form = h("form.actions", { "aria-label": "Create an API key" },
    field("Name", name), field("Role", role), h("button", { type: "submit" }, "Create key"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const created = await api(base, { method: "POST", body: { name: name.value, role: role.value } });
      const value = h("input.mono", { type: "text", readonly: true, value: created.value, "aria-label": "The new key" });
      shown.replaceChildren(h("div.notice", { role: "status" },
        h("p", "The new key, shown only now: copy it before leaving this page."), value));
      value.select();
      name.value = "";
      await load();
    } catch (error) {
      shown.replaceChildren(errorBox(error));
    }
  });
  load();
  return h("section.card", { "aria-labelledby": "keys-title" }, h("h2", { id: "keys-title" }, "API keys"), form, shown,
    h("div.table-wrap", h("table.plain",
      h("thead", h("tr", ["Name", "Key", "Role", "Created", "Last used", ""].map((c) => h("th", { scope: "col" }, c)))),
      list)));
}

function auditCard(project) {
  const base = `organization/projects/${encodeURIComponent(project.id)}/audit_logs`;
  const list = h("tbody");
  const more = h("button.quiet", { type: "button", hidden: true }, "Older events");
  let after = null;
  const load = async () => {
    try {
      const page = await api(base, { query: [["limit", "20"], ["after", after]] });
      list.append(...page.data.map((e) => h("tr",
        h("td", formatTime(e.effective_at)), h("td", e.actor), h("td", e.action), h("td", h("code", e.target)),
        h("td", e.outcome))));
      if (!page.data.length && !after) list.append(h("tr.empty", h("td", { colspan: 5 }, "Nothing audited yet.")));
      after = page.last_id;
      more.hidden = !page.has_more;
    } catch (error) {
      list.append(h("tr", h("td", { colspan: 5 }, errorBox(error))));
    }
  };
  more.addEventListener("click", load);
  load();
  return h("section.card", { "aria-labelledby": "audit-title" }, h("h2", { id: "audit-title" }, "Audit log"),
    h("div.table-wrap", h("table.plain",
      h("thead", h("tr", ["Time", "Actor", "Action", "Target", "Outcome"].map((c) => h("th", { scope: "col" }, c)))),
      list)), more);
}
