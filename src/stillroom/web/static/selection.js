// What Distill and Evaluate act on: the completions selected in the list (`ids=` in the URL), or, when none
// is selected, every completion the list's filters match (`model=`, `m.<key>=`). Kept in the URL so a reload
// never widens the selection.

import { api, listAll } from "./api.js";
import { h } from "./dom.js";

export function selectionFrom(params) {
  const ids = (params.get("ids") || "").split(",").filter(Boolean);
  const metadata = {};
  for (const [name, value] of params) if (name.startsWith("m.")) metadata[name.slice(2)] = value;
  return { ids, metadata, model: params.get("model") || "" };
}

export function selectionQuery({ ids, metadata, model }) {
  const params = new URLSearchParams();
  if (ids.length) params.set("ids", ids.join(","));
  if (model) params.set("model", model);
  for (const [key, value] of Object.entries(metadata)) params.append(`m.${key}`, value);
  return params.toString();
}

export function describeSelection(selection) {
  const { ids, metadata, model } = selection;
  const pairs = Object.entries(metadata).map(([k, v]) => h("code", `${k}=${v}`));
  const filters = [];
  if (model) filters.push(h("span", "model ", h("code", model)));
  if (pairs.length) filters.push(h("span", "metadata ", pairs.flatMap((p, i) => (i ? [", ", p] : [p]))));
  const scope = filters.length ? filters.flatMap((f, i) => (i ? ["; ", f] : [f])) : ["no filter: every stored completion of the project"];
  return h("p.selection", { dataset: { count: ids.length || "" } },
    ids.length ? `${ids.length} selected completion${ids.length === 1 ? "" : "s"}` : "Every completion matching ",
    ids.length ? (filters.length ? [" (within ", ...scope, ")"] : "") : scope, ".",
    " ", h("a", { href: `#/completions${filters.length ? `?${selectionQuery({ ...selection, ids: [] })}` : ""}` }, "Change"));
}

// The selection as the Distill request's fields.
export function distillSelection({ ids, metadata, model }) {
  const body = {};
  if (ids.length) body.ids = ids;
  if (Object.keys(metadata).length) body.metadata = metadata;
  if (model) body.model = model;
  return body;
}

// The selection as an eval run's stored_completions source.
export function evalSource({ ids, metadata, model }) {
  const source = { type: "stored_completions" };
  if (ids.length) source.ids = ids;
  if (Object.keys(metadata).length) source.metadata = metadata;
  if (model) source.model = model;
  return source;
}

// The first selected completion as the item an eval grades ({{item.*}}), for trying a grader on it.
export async function firstItem({ ids, metadata, model }) {
  let id = ids[0];
  if (!id) {
    const query = [["limit", "1"], ["order", "asc"], ["model", model]];
    for (const [k, v] of Object.entries(metadata)) query.push([`metadata[${k}]`, v]);
    id = (await api("chat/completions", { query })).data[0]?.id;
  }
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
