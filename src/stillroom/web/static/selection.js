// What Distill and Evaluate act on: the completions selected in the list (`ids=` in the URL), or, when none
// is selected, every completion the list's filters match: metadata pairs, model, full-text search and time
// range, in the URL as the list keeps them (`m.<key>=`, `model=`, `q=`, `from=`, `to=`). The server takes the
// same filter fields for a dataset and an eval source as for the list, so the wizards act on exactly what
// the list shows. Kept in the URL so a reload never widens the selection.

import { api, listAll } from "./api.js";
import { bulkPath, filterBody, filtersFrom, hashFor, listQuery } from "./completions.js";
import { formatNumber, formatTime, h } from "./dom.js";

export function selectionFrom(params) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean);
  const filters = { ...filtersFrom(params), after: "" };
  const body = filterBody(filters);
  return { ids, filters, body, metadata: body.metadata || {}, model: filters.model };
}

// The selection as the wizard's URL query (the list's own filter parameters, plus `ids`).
export function selectionQuery({ ids, filters }) {
  const params = new URLSearchParams(hashFor({ ...filters, order: "desc", limit: "20", after: "" }).split("?")[1] || "");
  if (ids.length) params.set("ids", ids.join(","));
  return params.toString();
}

function localTime(value) {
  const seconds = new Date(value).getTime() / 1000;
  return Number.isNaN(seconds) ? value : formatTime(seconds);
}

// "12 selected completions (within search …)" or "Every completion matching …", with the server's count of
// the matches (the dry run of a delete by the same filter) when no rows are selected.
export function describeSelection(selection) {
  const { ids, filters, body } = selection;
  const parts = [];
  if (filters.q) parts.push(h("span", "search ", h("code", filters.q)));
  if (filters.model) parts.push(h("span", "model ", h("code", filters.model)));
  const pairs = filters.metadata.map(([k, v]) => h("code", `${k}=${v}`));
  if (pairs.length) parts.push(h("span", "metadata ", pairs.flatMap((p, i) => (i ? [", ", p] : [p]))));
  if (filters.from) parts.push(h("span", "created from ", h("time", localTime(filters.from))));
  if (filters.to) parts.push(h("span", `created ${filters.from ? "" : "up "}to `, h("time", localTime(filters.to))));
  const scope = parts.length ? parts.flatMap((f, i) => (i ? ["; ", f] : [f])) : ["no filter: every stored completion of the project"];
  const count = h("span.match-count", { "aria-live": "polite" });
  const line = h("p.selection", { dataset: { count: ids.length || "" } },
    ids.length ? `${ids.length} selected completion${ids.length === 1 ? "" : "s"}` : "Every completion matching ",
    ids.length ? (parts.length ? [" (within ", ...scope, ")"] : "") : scope, ".", count,
    " ", h("a", { href: `#/completions${parts.length ? `?${selectionQuery({ ...selection, ids: [] })}` : ""}` }, "Change"));
  if (!ids.length && parts.length) countMatches(body, count, line);
  return line;
}

async function countMatches(body, count, line) {
  try {
    const counted = await api(bulkPath(), { method: "POST", body: { ...body, dry_run: true } });
    count.textContent = ` ${formatNumber(counted.matched)} completion${counted.matched === 1 ? "" : "s"} match now.`;
    line.dataset.matched = String(counted.matched);
  } catch {
    count.textContent = ""; // the wizard's own request says what is wrong with the filter
  }
}

// The selection as the Distill request's fields: the list's filter fields, and the ids when rows are selected.
export function distillSelection({ ids, body }) {
  return ids.length ? { ...body, ids } : { ...body };
}

// The selection as an eval run's stored_completions source (the same fields).
export function evalSource(selection) {
  return { type: "stored_completions", ...distillSelection(selection) };
}

// The first selected completion as the item an eval grades ({{item.*}}), for trying a grader on it.
export async function firstItem({ ids, filters }) {
  let id = ids[0];
  if (!id) id = (await api("chat/completions", { query: listQuery({ ...filters, limit: "1", order: "asc", after: "" }) })).data[0]?.id;
  if (!id) return null;
  const path = `chat/completions/${encodeURIComponent(id)}`;
  const [completion, messages] = await Promise.all([api(path), listAll(`${path}/messages`)]);
  const answer = completion.choices?.[0]?.message || {};
  const user = [...messages].reverse().find((m) => m.role === "user");
  return {
    id: completion.id,
    created_at: completion.created,
    model: completion.model,
    metadata: completion.metadata || {},
    input: messages.map(({ role, content, name, tool_calls, tool_call_id }) =>
      Object.fromEntries(Object.entries({ role, content, name, tool_calls, tool_call_id }).filter(([, v]) => v !== undefined && v !== null))),
    user_text: typeof user?.content === "string" ? user.content : "",
    output_text: typeof answer.content === "string" ? answer.content : "",
    output_tools: answer.tool_calls || [],
  };
}
