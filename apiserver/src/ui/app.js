// ownkube's live topology page.
//
// It does what kubectl and every controller do: LIST each kind, then WATCH from the
// list's resourceVersion (one JSON event per line), applying ADDED / MODIFIED / DELETED
// to a local copy, and relisting if the watch ends. From that copy it draws the nodes
// (pod CIDR; the bridge and each pod's veth, as the node's agent reads them from the
// kernel at /debug/network), the pods (IP, phase), and the Services with an arrow to
// each endpoint of their EndpointSlices. Clicking a Service asks each node's agent to
// explain a packet to it (/debug/explain, from the rules the kernel holds); clicking a
// pod shows its events and the end of its log.
"use strict";

const KINDS = {
  nodes: "/api/v1/nodes",
  pods: "/api/v1/pods",
  services: "/api/v1/services",
  slices: "/apis/discovery.k8s.io/v1/endpointslices",
};
const state = { nodes: new Map(), pods: new Map(), services: new Map(), slices: new Map(), network: new Map(), errors: new Map() };
const key = (o) => `${o.metadata.namespace || ""}/${o.metadata.name}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// h("div", {class: "pod"}, "text", child): elements with text set as text, never as HTML.
function h(tag, attrs, ...children) {
  const e = document.createElementNS(tag === "path" ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(typeof c === "string" ? document.createTextNode(c) : c);
  return e;
}

// ---- Informers: list, then watch; relist on any end or error -------------------------

async function follow(kind) {
  for (;;) {
    try {
      const list = await fetchJSON(KINDS[kind]);
      state[kind] = new Map(list.items.map((o) => [key(o), o]));
      state.errors.delete(kind);
      redraw();
      await watch(kind, list.metadata.resourceVersion);
    } catch (e) {
      state.errors.set(kind, String(e));
      redraw();
    }
    await sleep(1000);
  }
}

async function watch(kind, rv) {
  const resp = await fetch(`${KINDS[kind]}?watch=true&resourceVersion=${encodeURIComponent(rv)}&allowWatchBookmarks=true`);
  if (!resp.ok) throw new Error(`watch ${kind}: HTTP ${resp.status}`);
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) apply(kind, JSON.parse(line));
    }
  }
}

function apply(kind, ev) {
  if (ev.type === "BOOKMARK") return;
  if (ev.type === "ERROR") throw new Error(`${kind}: ${ev.object && ev.object.message}`); // e.g. 410 Gone: relist
  if (ev.type === "DELETED") state[kind].delete(key(ev.object));
  else state[kind].set(key(ev.object), ev.object);
  if (kind === "pods") networkSoon();
  redraw();
}

async function fetchJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// Each node's bridge and veths, from its agent (kernel state, not the API): every 3 s,
// and soon after the pods change.
let networkDue = null;
function networkSoon() {
  if (networkDue) networkDue();
}
async function pollNetwork() {
  for (;;) {
    for (const n of state.nodes.values()) {
      try {
        state.network.set(n.metadata.name, await fetchJSON(`/api/v1/nodes/${encodeURIComponent(n.metadata.name)}/proxy/debug/network`));
      } catch (e) {
        state.network.delete(n.metadata.name);
      }
    }
    redraw();
    await Promise.race([sleep(state.nodes.size ? 3000 : 300), new Promise((r) => (networkDue = r))]);
    networkDue = null;
  }
}

// ---- Drawing ----------------------------------------------------------------------

let pending = false;
function redraw() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    draw();
  });
}

const internalIP = (n) => ((n.status && n.status.addresses) || []).find((a) => a.type === "InternalIP")?.address;
const ready = (n) => ((n.status && n.status.conditions) || []).some((c) => c.type === "Ready" && c.status === "True");

function podPhase(p) {
  if (p.metadata.deletionTimestamp) return "Terminating";
  return (p.status && p.status.phase) || "Pending";
}

function podCard(p) {
  const phase = podPhase(p);
  const ip = (p.status && p.status.podIP) || "";
  const net = state.network.get(p.spec.nodeName);
  const veth = net && (net.veths || []).find((v) => v.netns === `ownkube-${p.metadata.uid}`);
  return h("div", { class: `pod ${phase.toLowerCase()}`, "data-name": p.metadata.name, "data-namespace": p.metadata.namespace, "data-ip": ip, onclick: () => showPod(p) },
    h("div", { class: "name" }, p.metadata.namespace === "default" ? p.metadata.name : key(p)),
    h("div", { class: "meta" }, ip || "no IP yet"),
    h("div", { class: "meta" }, phase + (veth ? ` · ${veth.name}` : "")));
}

function nodeBox(n) {
  const name = n.metadata.name;
  const net = state.network.get(name);
  const pods = [...state.pods.values()].filter((p) => p.spec.nodeName === name).sort((a, b) => key(a).localeCompare(key(b)));
  const bridge = net ? `bridge ${net.bridge} ${(net.addresses || []).join(" ")} · ${(net.veths || []).length} veths` : "bridge: asking the agent…";
  return h("div", { class: `node ${ready(n) ? "" : "notready"}`, "data-node": name },
    h("h3", {}, name),
    h("div", { class: "meta" }, `${internalIP(n) || "?"} · pods ${(n.spec && n.spec.podCIDR) || "?"} · ${ready(n) ? "Ready" : "NotReady"}`),
    h("div", { class: "bridge" }, h("div", { class: "meta" }, bridge), h("div", { class: "pods" }, pods.map(podCard))));
}

function endpointsOf(svc) {
  const ips = [];
  for (const s of state.slices.values()) {
    const labels = s.metadata.labels || {};
    if (s.metadata.namespace !== svc.metadata.namespace || labels["kubernetes.io/service-name"] !== svc.metadata.name) continue;
    for (const e of s.endpoints || []) if (!e.conditions || e.conditions.ready !== false) ips.push(...(e.addresses || []));
  }
  return [...new Set(ips)];
}

function serviceCard(svc) {
  const spec = svc.spec || {};
  const ports = (spec.ports || []).map((p) => `${p.port}${p.nodePort ? ":" + p.nodePort : ""}/${p.protocol || "TCP"}`).join(", ");
  const eps = endpointsOf(svc);
  return h("div", { class: `svc ${eps.length ? "" : "noendpoints"}`, "data-name": svc.metadata.name, "data-namespace": svc.metadata.namespace,
    "data-nodeports": (spec.ports || []).map((p) => p.nodePort).filter(Boolean).join(","), onclick: () => showService(svc) },
    h("div", { class: "name" }, svc.metadata.namespace === "default" ? svc.metadata.name : key(svc)),
    h("div", { class: "meta" }, `${spec.type || "ClusterIP"} ${spec.clusterIP || ""}`),
    h("div", { class: "meta" }, `${ports} · ${eps.length} endpoint${eps.length === 1 ? "" : "s"}`));
}

function draw() {
  const nodes = [...state.nodes.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  const unscheduled = [...state.pods.values()].filter((p) => !p.spec.nodeName);
  const box = document.getElementById("nodes");
  box.replaceChildren(...nodes.map(nodeBox));
  if (unscheduled.length) box.append(h("div", { class: "node unscheduled" }, h("h3", {}, "not scheduled"), h("div", { class: "pods" }, unscheduled.map(podCard))));
  const svcs = [...state.services.values()].sort((a, b) => key(a).localeCompare(key(b)));
  document.getElementById("service-list").replaceChildren(...svcs.map(serviceCard));
  arrows(svcs);
  const errors = [...state.errors.values()];
  document.getElementById("status").textContent = errors.length ? `reconnecting: ${errors.join("; ")}`
    : `watching · ${nodes.length} nodes · ${state.pods.size} pods · ${svcs.length} services · ${new Date().toLocaleTimeString()}`;
}

// One arrow from each Service to each pod its EndpointSlices list.
function arrows(svcs) {
  const svg = document.getElementById("arrows");
  const origin = document.getElementById("main").getBoundingClientRect();
  svg.querySelectorAll("path.edge").forEach((p) => p.remove());
  for (const svc of svcs) {
    const from = document.querySelector(`.svc[data-namespace="${CSS.escape(svc.metadata.namespace)}"][data-name="${CSS.escape(svc.metadata.name)}"]`);
    if (!from) continue;
    const a = from.getBoundingClientRect();
    for (const ip of endpointsOf(svc)) {
      const to = document.querySelector(`.pod[data-ip="${CSS.escape(ip)}"]`);
      if (!to) continue;
      // From the Service's right edge down onto the pod's top edge, over the node boxes.
      const b = to.getBoundingClientRect();
      const [x1, y1] = [a.right - origin.left, a.top + a.height / 2 - origin.top];
      const [x2, y2] = [b.left + b.width / 2 - origin.left, b.top - origin.top];
      svg.append(h("path", { class: "edge", d: `M ${x1} ${y1} C ${x1 + 80} ${y1}, ${x2} ${y2 - 60}, ${x2} ${y2}`, "marker-end": "url(#head)" }));
    }
  }
}

// ---- Details ----------------------------------------------------------------------

function panel(...children) {
  document.getElementById("detail-body").replaceChildren(...children);
  document.getElementById("detail").hidden = false;
}

async function showService(svc) {
  const port = (svc.spec.ports || [])[0];
  if (!port || !svc.spec.clusterIP || svc.spec.clusterIP === "None") return panel(h("h3", {}, key(svc)), h("p", {}, "no ClusterIP to explain"));
  const parts = [h("h3", {}, `Service ${key(svc)}`),
    h("p", {}, `A packet from each node to ${svc.spec.clusterIP}:${port.port}, as that node's rules take it (/debug/explain):`)];
  panel(...parts);
  for (const n of [...state.nodes.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))) {
    const q = new URLSearchParams({ src: internalIP(n) || "", dst: svc.spec.clusterIP, port: port.port, proto: (port.protocol || "TCP").toLowerCase(), format: "text" });
    let text;
    try {
      const r = await fetch(`/api/v1/nodes/${encodeURIComponent(n.metadata.name)}/proxy/debug/explain?${q}`);
      text = await r.text();
    } catch (e) {
      text = String(e);
    }
    const chains = [...new Set(text.split("\n").map((l) => l.match(/^\s+\w+\s+(?:iptables \w+|nft ip \w+)\s+(\S+)/)).filter(Boolean).map((m) => m[1]))];
    parts.push(h("h4", {}, `on ${n.metadata.name}: chains ${chains.join(" → ")}`), h("pre", { class: "explain" }, text));
    panel(...parts);
  }
}

async function showPod(p) {
  const ns = encodeURIComponent(p.metadata.namespace), name = encodeURIComponent(p.metadata.name);
  const parts = [h("h3", {}, `Pod ${key(p)}`), h("div", { class: "meta" }, `${podPhase(p)} on ${p.spec.nodeName || "no node"} · ${(p.status && p.status.podIP) || "no IP"}`)];
  panel(...parts);
  try {
    const ev = await fetchJSON(`/api/v1/namespaces/${ns}/events?fieldSelector=${encodeURIComponent("involvedObject.name=" + p.metadata.name)}`);
    const lines = ev.items.map((e) => `${e.lastTimestamp || e.eventTime || ""}  ${e.type}  ${e.reason}  ${e.message}`);
    parts.push(h("h4", {}, "Events"), h("pre", {}, lines.join("\n") || "none"));
  } catch (e) {
    parts.push(h("h4", {}, "Events"), h("pre", {}, String(e)));
  }
  try {
    const r = await fetch(`/api/v1/namespaces/${ns}/pods/${name}/log?tailLines=40`);
    parts.push(h("h4", {}, "Log (last 40 lines)"), h("pre", {}, await r.text()));
  } catch (e) {
    parts.push(h("h4", {}, "Log"), h("pre", {}, String(e)));
  }
  panel(...parts);
}

// What the page shows, read back from the page itself (for the headless-browser test).
window.topology = () => ({
  nodes: [...document.querySelectorAll(".node[data-node]")].map((e) => e.dataset.node),
  bridges: [...document.querySelectorAll(".node[data-node] .bridge > .meta")].map((e) => e.textContent),
  pods: [...document.querySelectorAll(".pod")].map((e) => ({ name: e.dataset.name, namespace: e.dataset.namespace, ip: e.dataset.ip, text: e.textContent })),
  services: [...document.querySelectorAll(".svc")].map((e) => ({ name: e.dataset.name, nodePorts: e.dataset.nodeports, text: e.textContent })),
  arrows: document.querySelectorAll("#arrows path.edge").length,
});

document.getElementById("close").addEventListener("click", () => (document.getElementById("detail").hidden = true));
window.addEventListener("resize", redraw);
for (const kind of Object.keys(KINDS)) follow(kind);
pollNetwork();
