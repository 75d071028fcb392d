// The acceptance-heatmap view: a canvas, a status line and a legend, fed with frames that the
// SpecAR sampler sends while it decodes (see engine/live.py for the frame format). No ComfyUI
// imports here, so the view can be exercised on any page. Text goes through textContent only.

const CANVAS_SIZE = 256;

export function createHeatmapView() {
  const root = document.createElement("div");
  root.className = "specar-heatmap";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;font:11px sans-serif;color:#ddd";
  const canvas = document.createElement("canvas");
  canvas.width = CANVAS_SIZE;
  canvas.height = CANVAS_SIZE;
  canvas.style.cssText = "width:100%;flex:1 1 auto;min-height:0;object-fit:contain;image-rendering:pixelated;background:#111";
  const status = document.createElement("div");
  const legend = document.createElement("div");
  legend.style.cssText = "display:flex;flex-wrap:wrap;gap:2px 8px";
  root.append(canvas, status, legend);
  const view = { root, canvas, status, legend, run: null };
  showIdle(view, "Acceptance heatmap: appears while sampling");
  return view;
}

/** Clear the picture (nothing stale from an earlier run) and say why. */
export function showIdle(view, text) {
  const ctx = view.canvas.getContext("2d");
  ctx.fillStyle = "#111";
  ctx.fillRect(0, 0, view.canvas.width, view.canvas.height);
  view.status.textContent = text;
  view.root.dataset.committed = "0";
  view.root.dataset.run = "";
}

/** "rrggbbrrggbb..." -> [[r, g, b], ...] */
export function parseCells(hex) {
  const cells = [];
  for (let i = 0; i + 6 <= hex.length; i += 6) {
    cells.push([0, 2, 4].map((o) => parseInt(hex.slice(i + o, i + o + 2), 16)));
  }
  return cells;
}

export function statusText(frame) {
  const parts = [
    `${frame.tokens_per_forward.toFixed(2)} tokens/forward`,
    `${frame.target_forwards} forwards`,
    `${frame.committed}/${frame.total} tokens`,
  ];
  if (frame.batch > 1) parts.push(`image 1 of ${frame.batch}`);
  parts.push(!frame.done ? "sampling…" : frame.committed === frame.total ? "done" : "stopped");
  if (typeof frame.error === "string") parts.push(`failed: ${frame.error}`);
  return parts.join(" · ");
}

const isCount = (value) => Number.isInteger(value) && value >= 0;

/** Whether a frame has every field drawFrame reads, with the right types (else it is not drawn). */
export function isDrawable(frame) {
  return (
    frame !== null &&
    typeof frame === "object" &&
    Array.isArray(frame.grid) &&
    frame.grid.length === 2 &&
    frame.grid.every((n) => isCount(n) && n > 0) &&
    typeof frame.cells === "string" &&
    [frame.committed, frame.total, frame.target_forwards, frame.batch].every(isCount) &&
    Number.isFinite(frame.tokens_per_forward) &&
    Array.isArray(frame.legend)
  );
}

/** Draw a frame; a frame that only reports a failure, or one that is malformed, leaves a clear status. */
export function drawFrame(view, frame) {
  if (!isDrawable(frame)) {
    const failed = frame && typeof frame.error === "string" ? `failed: ${frame.error}` : "heatmap frame unreadable";
    showIdle(view, failed);
    return;
  }
  const [rows, cols] = frame.grid;
  const cells = parseCells(frame.cells);
  if (cells.length !== rows * cols) return;
  const ctx = view.canvas.getContext("2d");
  const w = view.canvas.width / cols;
  const h = view.canvas.height / rows;
  cells.forEach(([r, g, b], i) => {
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(Math.floor((i % cols) * w), Math.floor(Math.floor(i / cols) * h), Math.ceil(w), Math.ceil(h));
  });
  view.status.textContent = statusText(frame);
  if (view.run !== frame.run) drawLegend(view, frame.legend);
  view.run = frame.run;
  view.root.dataset.run = frame.run;
  view.root.dataset.committed = String(frame.committed);
  view.root.dataset.done = String(frame.done);
}

function drawLegend(view, legend) {
  view.legend.replaceChildren();
  for (const entry of legend) {
    if (!Array.isArray(entry) || entry.length !== 2) continue;
    const [label, color] = entry;
    if (typeof label !== "string" || !/^#[0-9a-f]{6}$/i.test(color)) continue;
    const item = document.createElement("span");
    const swatch = document.createElement("span");
    swatch.style.cssText = `display:inline-block;width:9px;height:9px;margin-right:3px;border:1px solid #666;background:${color}`;
    item.append(swatch, document.createTextNode(label));
    view.legend.append(item);
  }
}
