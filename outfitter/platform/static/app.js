// Outfit Studio: a page over the serving app's HTTP API (no framework, no build step).
//
// Every URL is relative, so the page works wherever the ingress is mounted. Responses that come
// back after a newer request of the same kind are dropped (a sequence number per kind), so a
// fast clicker never sees an old score over a newer outfit.

const CATEGORIES = [ // the 11 Polyvore semantic categories the API accepts (schemas.CategoryName)
  "accessories", "all-body", "bags", "bottoms", "hats", "jewellery",
  "outerwear", "scarves", "shoes", "sunglasses", "tops",
];
const PAGE_SIZE = 24;
const MAX_OUTFIT = 12; // the API's default limit; the model may allow fewer (the API then says so)
const MODEL_POLL_MS = 30000; // a promoted champion shows up without a reload

const $ = (id) => document.getElementById(id);

const state = {
  outfit: [], // [{item_id, title, category}]
  catalog: { category: "", q: "", offset: 0, total: 0, seq: 0 },
  score: { seq: 0, previous: null, scoredKey: null, weakestIndex: null },
  retrieve: { seq: 0, results: [] },
  modelVersion: null,
};

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(message, errors = [], status = 0) {
    super(message);
    this.errors = errors;
    this.status = status;
  }
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  };
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError("The server cannot be reached. Is Outfitter still serving?");
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    // a non-JSON body: reported below by its status
  }
  if (!res.ok) {
    const message = (data && data.error) || `${res.status} ${res.statusText}`;
    throw new ApiError(message, (data && data.errors) || [], res.status);
  }
  return data;
}

function showError(box, err) {
  box.replaceChildren();
  const head = el("div", "error-head", err.status ? `Request refused (${err.status})` : "Error");
  box.append(head);
  if (err.errors && err.errors.length) {
    const list = el("ul");
    for (const e of err.errors) {
      const li = el("li");
      li.append(el("code", "", e.field), document.createTextNode(` ${e.rule}`));
      list.append(li);
    }
    box.append(list);
  } else {
    box.append(el("div", "", err.message));
  }
  box.hidden = false;
}

function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

// ------------------------------------------------------------------ small DOM helpers

function el(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

function thumb(item, className = "thumb") {
  const img = el("img", className);
  img.src = `v1/items/${encodeURIComponent(item.item_id)}/image`;
  img.alt = item.title || item.item_id;
  img.loading = "lazy";
  img.decoding = "async";
  img.addEventListener("error", () => img.classList.add("missing"), { once: true });
  return img;
}

function itemText(item) {
  const box = el("div", "item-text");
  const title = el("div", "item-title", item.title || `item ${item.item_id}`);
  title.title = title.textContent;
  box.append(title, el("span", "chip", item.category));
  return box;
}

const pct = (p) => `${(100 * p).toFixed(1)}%`;
const inOutfit = (id) => state.outfit.some((it) => it.item_id === id);
const fmt = new Intl.NumberFormat("en");

// ------------------------------------------------------------------ model badge

function metricChips(metrics) {
  const pick = (test) => Object.keys(metrics).filter(test).sort()[0];
  const chips = [];
  const auc = pick((k) => k.includes("compatibility_auc"));
  const fitb = pick((k) => k.includes("fitb_accuracy") && !k.includes("compat"));
  if (auc) chips.push(`AUC ${metrics[auc].toFixed(3)}`);
  if (fitb) chips.push(`FITB ${pct(metrics[fitb])}`);
  return chips;
}

async function loadModel() {
  const box = $("model");
  try {
    const info = await api("v1/model");
    state.modelVersion = info.version;
    const version = /^\d+$/.test(info.version) ? `v${info.version}` : info.version;
    const parts = [`Serving ${info.name} ${version}`];
    if (info.alias) parts.push(`@${info.alias}`);
    const details = [];
    if (info.model_config_name) details.push(info.model_config_name);
    if (info.index && info.index.n_items) details.push(`${fmt.format(info.index.n_items)} items indexed`);
    details.push(...metricChips(info.metrics || {}));
    $("model-text").replaceChildren(
      el("strong", "", parts.join(" ")),
      ...details.map((d) => el("span", "model-chip", d)),
    );
    box.dataset.version = info.version;
    box.dataset.state = info.load_error ? "warning" : "ok";
    box.title = info.load_error
      ? `The last model reload failed; the previous version keeps serving: ${info.load_error}`
      : `run ${info.run_id || "—"}`;
  } catch (err) {
    box.dataset.state = "error";
    $("model-text").textContent = `Model unavailable: ${err.message}`;
  }
}

function noteVersion(version) {
  if (version && version !== state.modelVersion) loadModel(); // a hot swap happened
}

// ------------------------------------------------------------------ catalog

async function loadCatalog() {
  const c = state.catalog;
  const seq = ++c.seq;
  const params = new URLSearchParams({ limit: PAGE_SIZE, offset: c.offset });
  if (c.category) params.set("category", c.category);
  if (c.q) params.set("q", c.q);
  $("catalog-grid").setAttribute("aria-busy", "true");
  try {
    const page = await api(`v1/items?${params}`);
    if (seq !== c.seq) return;
    clearError($("catalog-error"));
    c.total = page.total;
    renderCatalog(page.items);
  } catch (err) {
    if (seq !== c.seq) return;
    showError($("catalog-error"), err);
  } finally {
    if (seq === c.seq) $("catalog-grid").removeAttribute("aria-busy");
  }
}

function renderCatalog(items) {
  const c = state.catalog;
  const grid = $("catalog-grid");
  grid.replaceChildren();
  for (const item of items) {
    const li = el("li");
    const card = el("button", "card");
    card.type = "button";
    card.dataset.itemId = item.item_id;
    card.setAttribute("aria-pressed", String(inOutfit(item.item_id)));
    card.title = `${item.title} (${item.category}): click to add or remove`;
    card.append(thumb(item), el("span", "check", "✓"), itemText(item));
    card.addEventListener("click", () => toggleItem(item));
    li.append(card);
    grid.append(li);
  }
  if (!items.length) grid.append(el("li", "empty wide", "No items match this search."));
  const first = c.total ? c.offset + 1 : 0;
  const last = Math.min(c.offset + items.length, c.total);
  $("page-info").textContent = `${fmt.format(first)}–${fmt.format(last)} of ${fmt.format(c.total)}`;
  $("catalog-count").textContent = `${fmt.format(c.total)} ${c.total === 1 ? "item" : "items"}`;
  $("prev").disabled = c.offset === 0;
  $("next").disabled = c.offset + PAGE_SIZE >= c.total;
}

function markSelected() {
  for (const node of document.querySelectorAll("[data-item-id][aria-pressed]")) {
    node.setAttribute("aria-pressed", String(inOutfit(node.dataset.itemId)));
  }
}

// ------------------------------------------------------------------ outfit

function toggleItem(item) {
  if (inOutfit(item.item_id)) removeItem(item.item_id);
  else addItem(item);
}

function addItem(item) {
  if (inOutfit(item.item_id)) return;
  if (state.outfit.length >= MAX_OUTFIT) {
    showError($("outfit-error"), new ApiError(`An outfit holds at most ${MAX_OUTFIT} items.`));
    return;
  }
  state.outfit.push({ item_id: item.item_id, title: item.title, category: item.category });
  outfitChanged();
}

function removeItem(itemId) {
  state.outfit = state.outfit.filter((it) => it.item_id !== itemId);
  outfitChanged();
}

function outfitChanged() {
  clearError($("outfit-error"));
  renderOutfit();
  markSelected();
  scoreOutfit();
}

function renderOutfit() {
  const list = $("outfit-list");
  list.replaceChildren();
  const s = state.score;
  const current = state.outfit.map((it) => it.item_id).join(",");
  state.outfit.forEach((item, i) => {
    const weakest = s.scoredKey === current && s.weakestIndex === i;
    const li = el("li", weakest ? "tile weakest" : "tile");
    li.dataset.itemId = item.item_id;
    if (weakest) li.dataset.weakest = "true";
    const remove = el("button", "remove", "×");
    remove.type = "button";
    remove.title = `Remove ${item.title}`;
    remove.setAttribute("aria-label", `Remove ${item.title}`);
    remove.addEventListener("click", () => removeItem(item.item_id));
    li.append(thumb(item), itemText(item), remove);
    if (weakest) {
      li.append(el("span", "badge", "Weakest"));
      const replace = el("button", "replace ghost small", "Replace…");
      replace.type = "button";
      replace.title = `Remove ${item.title} and search for a better ${item.category} piece`;
      replace.addEventListener("click", () => findReplacement(item));
      li.append(replace);
    }
    list.append(li);
  });
  $("outfit-empty").hidden = state.outfit.length > 0;
  $("clear-outfit").hidden = state.outfit.length === 0;
}

function setScore(stateName, value, verdict, note = "") {
  const box = $("score");
  box.dataset.state = stateName;
  $("score-value").textContent = value;
  $("score-verdict").textContent = verdict;
  $("score-note").replaceChildren(...(Array.isArray(note) ? note : [note]));
}

async function scoreOutfit() {
  const s = state.score;
  const seq = ++s.seq;
  const snapshot = state.outfit.slice();
  if (snapshot.length < 2) {
    s.previous = null;
    s.scoredKey = null;
    $("score-bar").style.width = "0%";
    $("score-delta").textContent = "";
    setScore("empty", "—", snapshot.length ? "Add one more item" : "Pick two or more items",
      "The model scores outfits of two or more items.");
    return;
  }
  $("score").dataset.pending = "true";
  try {
    const res = await api("v1/compatibility", {
      items: snapshot.map((it) => ({ item_id: it.item_id })),
    });
    if (seq !== s.seq) return;
    noteVersion(res.model_version);
    clearError($("outfit-error"));
    renderScore(res, snapshot);
  } catch (err) {
    if (seq !== s.seq) return;
    setScore("error", "—", "Could not score this outfit");
    showError($("outfit-error"), err);
  } finally {
    if (seq === s.seq) delete $("score").dataset.pending;
  }
}

function renderScore(res, snapshot) {
  const s = state.score;
  const p = res.score;
  const name = p >= 0.65 ? "good" : p >= 0.4 ? "fair" : "poor";
  const verdict = { good: "Works well together", fair: "Could work", poor: "Clashes" }[name];
  const delta = s.previous === null ? null : 100 * (p - s.previous);
  $("score-delta").textContent = delta === null ? ""
    : `${delta >= 0 ? "+" : "−"}${Math.abs(delta).toFixed(1)} pts since the last change`;
  s.previous = p;
  s.scoredKey = snapshot.map((it) => it.item_id).join(",");
  s.weakestIndex = res.weakest_item.index;
  $("score-bar").style.width = `${(100 * p).toFixed(1)}%`;
  const weak = snapshot[res.weakest_item.index];
  const gain = 100 * (res.weakest_item.score_without - p);
  const note = [
    "Weakest item: ",
    el("strong", "", weak ? weak.title : `item ${res.weakest_item.index + 1}`),
    gain > 0
      ? ` — without it the outfit scores ${pct(res.weakest_item.score_without)} (+${gain.toFixed(1)} pts).`
      : ` — every item helps; the best outfit without one scores ${pct(res.weakest_item.score_without)}.`,
  ];
  setScore(name, pct(p), verdict, note);
  $("score").dataset.score = String(p);
  renderOutfit();
}

function findReplacement(item) {
  removeItem(item.item_id);
  $("target-category").value = item.category;
  const input = $("target-description");
  input.placeholder = `Describe a better ${item.category} piece`;
  input.focus();
}

// ------------------------------------------------------------------ retrieval

async function runRetrieve(event) {
  event.preventDefault();
  const r = state.retrieve;
  const box = $("retrieve-error");
  const description = $("target-description").value.trim();
  if (!state.outfit.length) {
    showError(box, new ApiError("Add at least one item to the outfit first: the model completes an outfit."));
    return;
  }
  if (!description) {
    showError(box, new ApiError("Describe the missing piece, e.g. “white canvas sneakers”."));
    return;
  }
  const target = { description };
  if ($("target-category").value) target.category = $("target-category").value;
  const seq = ++r.seq;
  $("retrieve-submit").disabled = true;
  $("retrieve-results").setAttribute("aria-busy", "true");
  try {
    const res = await api("v1/retrieve", {
      items: state.outfit.map((it) => ({ item_id: it.item_id })),
      target,
      k: Number($("target-k").value),
    });
    if (seq !== r.seq) return;
    noteVersion(res.model_version);
    clearError(box);
    r.results = res.items;
    r.category = res.category;
    renderResults();
  } catch (err) {
    if (seq !== r.seq) return;
    showError(box, err);
  } finally {
    if (seq === r.seq) {
      $("retrieve-submit").disabled = false;
      $("retrieve-results").removeAttribute("aria-busy");
    }
  }
}

function renderResults() {
  const list = $("retrieve-results");
  list.replaceChildren();
  const results = state.retrieve.results;
  const top = Math.max(...results.map((h) => h.score), 1e-9);
  const low = Math.min(...results.map((h) => h.score), 0);
  results.forEach((hit, i) => {
    const li = el("li");
    const card = el("button", "result");
    card.type = "button";
    card.dataset.itemId = hit.item_id;
    card.dataset.score = String(hit.score);
    card.setAttribute("aria-pressed", String(inOutfit(hit.item_id)));
    card.title = `Add ${hit.title || hit.item_id} to the outfit`;
    const match = el("span", "match");
    const track = el("span", "match-track");
    const bar = el("span", "match-bar");
    bar.style.width = `${Math.max(4, (100 * (hit.score - low)) / (top - low || 1)).toFixed(0)}%`;
    track.append(bar);
    match.append(track, el("span", "match-score", hit.score.toFixed(3)));
    match.title = "match score (higher is better)";
    card.append(el("span", "rank", String(i + 1)), thumb(hit), itemText(hit), match,
      el("span", "add", "+ Add"), el("span", "added", "✓ In outfit"));
    card.addEventListener("click", () => addItem(hit));
    li.append(card);
    list.append(li);
  });
  $("retrieve-hint").textContent = results.length
    ? "Scores are the model's match between your outfit + description and each item. Click one to add it."
    : "No catalog item matches; try another category.";
  $("retrieve-category").textContent = categoryNote(state.retrieve.category);
}

// What the model made of the category: given, inferred from the description (and how sure), and
// which items it searched.
function categoryNote(c) {
  if (!c) return "";
  const where = c.searched ? `searched ${c.searched}` : "searched the whole catalog";
  if (!c.inferred) return `Category ${c.name} (given); ${where}.`;
  const sure = `${(100 * c.confidence).toFixed(0)} % sure`;
  return `Category inferred from your description: ${c.name} (${sure}); ${where}.`;
}

// ------------------------------------------------------------------ wiring

function fillCategories(select) {
  for (const c of CATEGORIES) select.append(new Option(c, c));
}

function init() {
  fillCategories($("category-filter"));
  fillCategories($("target-category"));
  let timer = null;
  $("search").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      state.catalog.q = e.target.value.trim();
      state.catalog.offset = 0;
      loadCatalog();
    }, 250);
  });
  $("catalog-filters").addEventListener("submit", (e) => e.preventDefault());
  $("category-filter").addEventListener("change", (e) => {
    state.catalog.category = e.target.value;
    state.catalog.offset = 0;
    loadCatalog();
  });
  $("prev").addEventListener("click", () => {
    state.catalog.offset = Math.max(0, state.catalog.offset - PAGE_SIZE);
    loadCatalog();
  });
  $("next").addEventListener("click", () => {
    state.catalog.offset += PAGE_SIZE;
    loadCatalog();
  });
  $("clear-outfit").addEventListener("click", () => {
    state.outfit = [];
    outfitChanged();
  });
  $("retrieve-form").addEventListener("submit", runRetrieve);
  renderOutfit();
  scoreOutfit();
  loadModel();
  loadCatalog();
  setInterval(loadModel, MODEL_POLL_MS);
}

init();
