// SpecAR's ComfyUI extension: a live acceptance heatmap on the nodes that decode (sampler, compare, relaxation preview).
// The server sends "specar.heatmap" frames (throttled, with the node id) while it decodes. Workflows saved with
// the nodes' older flat widgets are rewritten for the current ones as they load.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { upgradeFlatWorkflow } from "./flat_workflows.js";
import { createHeatmapView, drawFrame, showIdle } from "./heatmap_view.js";

const EVENT = "specar.heatmap";
const NODE_TYPES = new Set(["SpecARSampler", "SpecARCompare", "SpecARRelaxationPreview"]);
const WIDGET_HEIGHT = 240;
const inputsByType = {}; // SpecAR node type -> its input definitions, as the server declared them

function viewOf(id) {
  const node = app.graph?.getNodeById(Number(id));
  return node?.specarView ?? null;
}

app.registerExtension({
  name: "specar.heatmap",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name.startsWith("SpecAR")) inputsByType[nodeData.name] = nodeData.input;
    if (!NODE_TYPES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      const view = createHeatmapView();
      this.addDOMWidget("specar_heatmap", "specar-heatmap", view.root, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: () => WIDGET_HEIGHT,
      });
      this.specarView = view;
      return result;
    };
  },

  async beforeConfigureGraph(workflow) {
    upgradeFlatWorkflow(workflow, inputsByType);
  },

  setup() {
    api.addEventListener(EVENT, ({ detail }) => {
      const view = viewOf(detail?.node);
      if (view) drawFrame(view, detail);
    });
    // A node that starts running clears its old picture, so nothing stale shows during the new run.
    api.addEventListener("executing", ({ detail }) => {
      const id = detail && typeof detail === "object" ? detail.display_node ?? detail.node : detail;
      const view = id == null ? null : viewOf(id);
      if (view) showIdle(view, "sampling…");
    });
  },
});
