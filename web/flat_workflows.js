// Workflows saved before a choice brought its own widgets (the policy, a drafter's shape, a tree head's kind)
// hold one flat list of every widget's value. Loaded as they are, those values would land on the wrong
// widgets; rewritten first, they keep what the artist set: the choice, then the chosen case's own widgets
// (values the flat list had, by name; the rest at their defaults), the free-text policy options read by name.

const DYNAMIC = "COMFY_DYNAMICCOMBO_V3";
const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", DYNAMIC]);

// Each node's widgets as the flat layout saved them, in order, and the one that became a choice.
const FLAT_LAYOUTS = {
  SpecARAcceptancePolicy: { names: ["policy", "relaxation", "expert_options"], choice: "policy" },
  SpecARDrafterModel: { names: ["drafter", "gamma", "dtype", "shape", "branching"], choice: "shape" },
  SpecARTreeHead: { names: ["head", "tree", "top_k", "depth", "nodes", "branching", "guidance"], choice: "tree" },
};

function widgetEntries(section) {
  const all = { ...(section?.required ?? {}), ...(section?.optional ?? {}) };
  return Object.entries(all).filter(([, spec]) => Array.isArray(spec[0]) || WIDGET_TYPES.has(spec[0]));
}

function defaultOf(spec) {
  if (spec[0] === DYNAMIC) return spec[1].options[0].key; // the frontend opens a dynamic combo on its first option
  if (Array.isArray(spec[0])) return spec[1]?.default ?? spec[0][0];
  return spec[1]?.default ?? spec[1]?.options?.[0];
}

// "neighbours=10, ratio_bound=inf" -> { neighbours: 10, ratio_bound: 0 }: the widgets show "off" as 0.
function policyOptions(text) {
  const options = {};
  for (const part of String(text ?? "").split(/[,;]/)) {
    const [key, value] = part.split("=").map((piece) => piece.trim());
    if (!key || value === undefined) continue;
    const number = /^\+?inf(inity)?$/i.test(value) ? 0 : Number(value);
    if (Number.isFinite(number)) options[key] = number;
  }
  return options;
}

function valueFor(saved, spec) {
  if (saved === undefined) return defaultOf(spec);
  return spec[0] === "BOOLEAN" ? Boolean(saved) : saved;
}

function caseOf(spec, key) {
  return spec[1].options.find((option) => option.key === key) ?? spec[1].options[0];
}

// The values a node of `type` takes now, for `values` saved in its flat layout; null when they are not.
export function upgradeFlatValues(type, values, inputs) {
  const layout = FLAT_LAYOUTS[type];
  if (!layout || !Array.isArray(values) || values.length !== layout.names.length || !inputs) return null;
  const entries = widgetEntries(inputs);
  const choiceSpec = entries.find(([name]) => name === layout.choice)?.[1];
  const key = values[layout.names.indexOf(layout.choice)];
  if (choiceSpec?.[0] !== DYNAMIC || !choiceSpec[1].options.some((option) => option.key === key)) return null;
  const takesNow = entries.length + widgetEntries(caseOf(choiceSpec, key).inputs).length;
  if (takesNow === values.length) return null; // saved as the widgets stand now
  const saved = Object.fromEntries(layout.names.map((name, i) => [name, values[i]]));
  Object.assign(saved, policyOptions(saved.expert_options));
  const upgraded = [];
  for (const [name, spec] of entries) {
    upgraded.push(valueFor(saved[name], spec));
    if (spec[0] !== DYNAMIC) continue;
    for (const [sub, subSpec] of widgetEntries(caseOf(spec, saved[name]).inputs)) {
      upgraded.push(valueFor(saved[sub], subSpec));
    }
  }
  return upgraded;
}

// Rewrites, in place, every flat SpecAR node of a workflow (subgraphs included) before the graph loads.
export function upgradeFlatWorkflow(workflow, inputsByType) {
  const nodes = [...(workflow?.nodes ?? []), ...(workflow?.definitions?.subgraphs ?? []).flatMap((s) => s.nodes ?? [])];
  for (const node of nodes) {
    const upgraded = upgradeFlatValues(node.type, node.widgets_values, inputsByType[node.type]);
    if (upgraded) node.widgets_values = upgraded;
  }
}
