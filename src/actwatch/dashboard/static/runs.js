// The run table of the actwatch tab: every run under the log directory with its final network
// figures (the `sweep` route), sortable by any column, a sparkline per metric, a name filter,
// and two runs picked to open side by side in the tab's columns.
//
// Text from the logs (run names, optimizers) only ever goes into the page as textContent.
// The table keeps its sort, filter and picks across refreshes. State for tests: the table's
// data-sort ("column:asc|desc") and data-shown (rows shown) attributes.

const SVG = "http://www.w3.org/2000/svg";
const LABELS = {
  dead_fraction: "dead", zero_fraction: "zero", dormant_fraction: "dormant",
  update_ratio: "update ratio",
};

function node(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

function fmt(v, metric) {
  if (v === null || v === undefined) return "-";
  if (metric === "update_ratio" || metric === "learning_rate") return Number(v).toExponential(1);
  return Number(v).toFixed(3);
}

// A sparkline of `values` (nulls skipped): 60x16 pixels, the last point marked.
function sparkline(values) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "aw-spark");
  svg.setAttribute("width", "60");
  svg.setAttribute("height", "16");
  const points = values.map((v, i) => [i, v]).filter(([, v]) => v !== null);
  if (points.length === 0) return svg;
  const ys = points.map(([, v]) => v);
  const low = Math.min(...ys);
  const span = Math.max(...ys) - low || 1;
  const n = Math.max(1, values.length - 1);
  const xy = points.map(([i, v]) => [1 + (58 * i) / n, 15 - (14 * (v - low)) / span]);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#1565c0");
  line.setAttribute("stroke-width", "1.2");
  const [lx, ly] = xy[xy.length - 1];
  const dot = document.createElementNS(SVG, "circle");
  dot.setAttribute("cx", String(lx));
  dot.setAttribute("cy", String(ly));
  dot.setAttribute("r", "1.8");
  dot.setAttribute("fill", "#e65100");
  svg.append(line, dot);
  return svg;
}

// A run table. `load()` fetches the rows; `open(names)` shows two runs side by side;
// `selected()` names the runs the tab shows. Returns {element, refresh}.
export function runTable({ load, open, selected }) {
  const view = { rows: [], metrics: [], sort: "dead_fraction", desc: true, filter: "", picks: [] };
  const filter = node("input", {
    type: "search", className: "aw-sweep-filter", placeholder: "filter runs by name",
    oninput: () => { view.filter = filter.value; draw(); },
  });
  const compare = node("button", {
    className: "aw-sweep-open", type: "button",
    onclick: () => { if (view.picks.length === 2) open([...view.picks]); },
  }, "Open side by side");
  const count = node("span", { className: "aw-muted" });
  const table = node("table", { className: "aw-sweep-table" });
  const element = node("details", { className: "aw-sweep", open: true },
    node("summary", {}, "All runs ", count),
    node("div", { className: "aw-sweep-tools" }, filter, compare,
      node("span", { className: "aw-muted" }, "tick two runs, then open them side by side")),
    table);

  function value(row, column) {
    if (column === "name" || column === "optimizer") return row[column] || "";
    if (column === "learning_rate" || column === "alerts") return row[column];
    return row.final[column];
  }

  function sorted(rows) {
    const sign = view.desc ? -1 : 1;
    return [...rows].sort((a, b) => {
      const x = value(a, view.sort);
      const y = value(b, view.sort);
      if (x === y) return a.name < b.name ? -1 : 1;
      if (x === null || x === undefined) return 1; // missing values last, either way
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sign;
    });
  }

  function heading(column, label) {
    const mark = view.sort === column ? (view.desc ? " ▼" : " ▲") : "";
    return node("th", {
      className: "aw-sweep-sort", dataset: { column }, title: `sort by ${label}`,
      onclick: () => {
        view.desc = view.sort === column ? !view.desc : column !== "name" && column !== "optimizer";
        view.sort = column;
        draw();
      },
    }, label + mark);
  }

  function draw() {
    const shown = new Set(selected());
    const needle = view.filter.trim().toLowerCase();
    const rows = sorted(view.rows.filter((r) => r.name.toLowerCase().includes(needle)));
    const head = node("tr", {}, node("th", {}, ""), heading("name", "run"),
      heading("learning_rate", "learning rate"), heading("optimizer", "optimizer"),
      ...view.metrics.map((m) => heading(m, LABELS[m] || m)), heading("alerts", "alerts"));
    const body = rows.map((row) => {
      const box = node("input", {
        type: "checkbox", className: "aw-sweep-pick", checked: view.picks.includes(row.name),
        onchange: () => {
          if (box.checked) view.picks = [...view.picks, row.name].slice(-2);
          else view.picks = view.picks.filter((n) => n !== row.name);
          draw();
        },
      });
      return node("tr", { dataset: { run: row.name }, className: shown.has(row.name) ? "aw-shown" : "" },
        node("td", {}, box), node("td", { className: "aw-sweep-name" }, row.name),
        node("td", {}, fmt(row.learning_rate, "learning_rate")),
        node("td", {}, row.optimizer || "-"),
        ...view.metrics.map((m) => node("td", { dataset: { metric: m } },
          sparkline(row.series[m] || []), " ", fmt(row.final[m], m))),
        node("td", {}, String(row.alerts)));
    });
    table.replaceChildren(node("thead", {}, head), node("tbody", {}, ...body));
    table.dataset.sort = `${view.sort}:${view.desc ? "desc" : "asc"}`;
    table.dataset.shown = String(rows.length);
    count.textContent = `(${rows.length} of ${view.rows.length})`;
    compare.disabled = view.picks.length !== 2;
  }

  async function refresh() {
    const answer = await load();
    view.rows = answer.runs;
    view.metrics = answer.metrics;
    const names = new Set(view.rows.map((r) => r.name));
    view.picks = view.picks.filter((n) => names.has(n));
    draw();
  }

  return { element, refresh, draw };
}
