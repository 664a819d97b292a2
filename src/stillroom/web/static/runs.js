// Evals and a run's page: the progress of every run (subject) of the eval, pass rates per criterion and
// subject with 95% intervals (GET /v1/evals/{id}/comparison, drawn as bars), and the items side by side with
// each grader's verdict, filterable to the items where the subjects disagree. `/console/evals/<eval>/runs/<run>`
// (a run's report_url) redirects here.

import { api, can, listAll } from "./api.js";
import { badge, confirmDialog, errorBox, formatNumber, formatTime, h, loadStyles, poll } from "./dom.js";
import { barChart, legend } from "./charts.js";

const FINISHED = ["completed", "failed", "canceled"];
const pct = (v) => `${(100 * v).toLocaleString(undefined, { maximumFractionDigits: 1 })}%`;

export async function renderEvals(view) {
  loadStyles("studio.css");
  const list = h("tbody", h("tr", h("td.loading", { colspan: 3 }, "Loading…")));
  view.replaceChildren(h("section", h("h1", { tabindex: "-1" }, "Evals"),
    h("div.table-wrap", h("table.plain", h("thead", h("tr", ["Eval", "Runs", "Created"].map((c) => h("th", { scope: "col" }, c)))), list))));
  try {
    const evals = (await api("evals", { query: [["limit", "50"], ["order", "desc"]] })).data;
    const rows = await Promise.all(evals.map(async (ev) => {
      const runs = (await api(`evals/${encodeURIComponent(ev.id)}/runs`, { query: [["limit", "20"]] })).data;
      return h("tr", h("td", ev.name || h("code", ev.id)),
        h("td", runs.length ? h("ul.inline", runs.map((r) => h("li", h("a", { href: `#/evals/${encodeURIComponent(ev.id)}/runs/${encodeURIComponent(r.id)}` }, r.name), " ", badge(r.status))))
          : h("span.muted", "no runs")),
        h("td", formatTime(ev.created_at)));
    }));
    list.replaceChildren(...rows);
    if (!rows.length) list.append(h("tr.empty", h("td", { colspan: 3 }, "No evals yet: select stored completions and press Evaluate.")));
  } catch (error) {
    list.replaceChildren(h("tr", h("td", { colspan: 3 }, errorBox(error))));
  }
}

function progress(runs, current, status, evalId) {
  return h("ul.runs", runs.map((run) => {
    const c = run.result_counts || {};
    const expected = run.data_source?.source?.ids?.length || run.data_source?.source?.content?.length || null;
    const done = FINISHED.includes(run.status);
    const meter = h("progress", { max: String(expected || Math.max(1, c.total || 1)), "aria-label": `${run.name} progress` });
    if (expected || done) meter.value = done ? meter.max : c.total || 0;
    return h("li", { class: run.id === current ? "current" : "", dataset: { run: run.id, status: run.status } },
      h("strong", run.name), " ", badge(run.status), " ", meter,
      ` ${formatNumber(c.total)} graded: ${formatNumber(c.passed)} passed, ${formatNumber(c.failed)} failed${c.errored ? `, ${formatNumber(c.errored)} errored` : ""}`,
      run.error?.message ? errorBox({ title: run.error.code || "Error", message: run.error.message }) : null,
      !done && can("stored-completions/action") ? h("button.quiet", { type: "button", onclick: async () => {
        if (!(await confirmDialog(`Cancel ${run.name}?`, "Items graded so far are kept.", "Cancel run"))) return;
        try {
          await api(`evals/${encodeURIComponent(evalId)}/runs/${encodeURIComponent(run.id)}/cancel`, { method: "POST", body: {} });
        } catch (error) {
          status.replaceChildren(errorBox(error));
        }
      } }, "Cancel run") : null);
  }));
}

function comparisonView(report) {
  if (!report.runs.length) return h("p.muted", "Pass rates appear when a run finishes.");
  const groups = report.criteria.map((c) => ({
    name: c.name,
    bars: c.subjects.map((s) => ({ name: s.name, value: s.pass_rate, low: s.low, high: s.high })),
  }));
  const names = report.runs.map((r) => r.name);
  const tests = new Map();
  for (const c of report.criteria) for (const t of c.tests) tests.set(`${c.name}|${t.subject}`, t);
  const table = h("table.plain.pass-rates",
    h("caption.visually-hidden", "Pass rates per criterion and subject"),
    h("thead", h("tr", ["Criterion", "Subject", "Passed", "Pass rate [95% CI]", `vs ${names[0]}`, "McNemar p"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", report.criteria.flatMap((c) => c.subjects.map((s, i) => {
      const t = tests.get(`${c.name}|${s.run_id}`);
      return h("tr", { dataset: { criterion: c.name, subject: s.name } },
        h("td", c.name), h("td", s.name), h("td.num", `${s.passed}/${s.n}`),
        h("td.num", `${pct(s.pass_rate)} [${pct(s.low)}, ${pct(s.high)}]`),
        h("td.num", i === 0 ? h("span.muted", "baseline") : t ? `${t.difference >= 0 ? "+" : ""}${pct(t.difference)} [${pct(t.low)}, ${pct(t.high)}]${t.significant ? " significant" : ""}` : "—"),
        h("td.num", t ? t.p_value.toPrecision(3) : ""));
    }))));
  return h("figure.chart-box",
    barChart(groups, { title: `Pass rate per criterion and subject, 95% intervals, ${report.items} paired items` }),
    legend(names),
    h("figcaption.muted", `${formatNumber(report.items)} items graded by every finished run; whiskers are Wilson 95% intervals.`),
    h("div.table-wrap", table));
}

function verdicts(item, criteria) {
  if (!item) return h("span.muted", "not graded");
  const byName = new Map(item.results.map((r) => [r.name, r]));
  const answer = item.sample?.error ? errorBox({ title: item.sample.error.code || "Error", message: item.sample.error.message })
    : h("div.text", item.sample?.output_text || h("span.muted", "(empty)"));
  return [h(`span.badge.verdict.${item.status}`, item.status), answer,
    h("ul.verdicts", criteria.map((c) => {
      const r = byName.get(c.id);
      if (!r) return null;
      return h("li", { class: r.passed ? "pass" : "fail", title: r.error || `score ${r.score}` },
        r.passed ? "✓ " : "✗ ", c.name, ` ${Number(r.score).toLocaleString(undefined, { maximumFractionDigits: 3 })}`);
    }))];
}

function itemsView(runs, itemsByRun, criteria) {
  const ids = [...new Set(runs.flatMap((r) => [...itemsByRun.get(r.id).keys()]))].sort((a, b) => a - b);
  const only = h("input", { type: "checkbox", name: "disagree" });
  const shown = h("p.muted.shown");
  const body = h("tbody");
  const draw = () => {
    const rows = [];
    for (const id of ids) {
      const items = runs.map((r) => itemsByRun.get(r.id).get(id));
      const statuses = new Set(items.filter(Boolean).map((i) => i.status));
      const disagree = statuses.size > 1;
      if (only.checked && !disagree) continue;
      const source = items.find(Boolean).datasource_item;
      rows.push(h("tr", { dataset: { item: id, disagree: disagree ? "true" : "false" } },
        h("td.num", String(id)),
        h("td.prompt", h("div.text", source.user_text ?? JSON.stringify(source))),
        items.map((item) => h("td.subject", verdicts(item, criteria)))));
    }
    body.replaceChildren(...rows);
    if (!rows.length) body.append(h("tr.empty", h("td", { colspan: runs.length + 2 }, only.checked ? "The subjects agree on every item." : "No graded items yet.")));
    shown.textContent = `${rows.length} of ${ids.length} items shown.`;
  };
  only.addEventListener("change", draw);
  draw();
  return h("div",
    h("div.field.switch", h("label", only, " Only items where the subjects disagree")), shown,
    h("div.table-wrap", h("table.plain.items",
      h("thead", h("tr", h("th", { scope: "col" }, "#"), h("th", { scope: "col" }, "Input"),
        runs.map((r) => h("th", { scope: "col" }, r.name)))),
      body)));
}

export async function renderRun(view, evalId, runId) {
  loadStyles("studio.css");
  const title = h("h1", { tabindex: "-1", id: "run-title" }, "Eval run");
  const status = h("div.status");
  const runsBox = h("div", h("p.muted", "Loading…"));
  const chart = h("div");
  const items = h("div");
  const page = h("article.run", { "aria-labelledby": "run-title" },
    h("a.back", { href: "#/evals" }, "← Evals"), title, status,
    h("section", { "aria-label": "Progress" }, h("h2", "Progress"), runsBox),
    h("section", { "aria-label": "Pass rates" }, h("h2", "Pass rates"), chart),
    h("section", { "aria-label": "Items" }, h("h2", "Items"), items));
  view.replaceChildren(page);
  let ev;
  try {
    ev = await api(`evals/${encodeURIComponent(evalId)}`);
  } catch (error) {
    runsBox.replaceChildren(errorBox(error));
    return;
  }
  title.textContent = ev.name || ev.id;
  let drawnFor = null;
  await poll(page, async () => {
    const runs = await listAll(`evals/${encodeURIComponent(evalId)}/runs`, [["order", "asc"]]);
    if (!runs.some((r) => r.id === runId)) {
      status.replaceChildren(errorBox({ title: "404 invalid_request_error", message: `Run with id '${runId}' not found.` }));
      return false;
    }
    runsBox.replaceChildren(progress(runs, runId, status, evalId));
    const finished = runs.filter((r) => FINISHED.includes(r.status) && r.status !== "failed");
    const key = finished.map((r) => `${r.id}:${r.status}`).join(",");
    if (key !== drawnFor) {
      drawnFor = key;
      const query = finished.map((r) => ["run_ids", r.id]);
      const [report, graded] = await Promise.all([
        finished.length ? api(`evals/${encodeURIComponent(evalId)}/comparison`, { query }) : { runs: [], criteria: [], items: 0 },
        Promise.all(finished.map((r) => listAll(`evals/${encodeURIComponent(evalId)}/runs/${encodeURIComponent(r.id)}/output_items`, [["order", "asc"]]))),
      ]);
      chart.replaceChildren(comparisonView(report));
      const itemsByRun = new Map(finished.map((r, i) => [r.id, new Map(graded[i].map((o) => [o.datasource_item_id, o]))]));
      items.replaceChildren(finished.length ? itemsView(finished, itemsByRun, ev.testing_criteria)
        : h("p.muted", "The items appear when a run finishes."));
    }
    return !runs.every((r) => FINISHED.includes(r.status));
  });
}
