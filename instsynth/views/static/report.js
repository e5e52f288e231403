// InstSynth report gallery: every sample, paged, filterable by class and generator.
// The page state lives in the URL hash (#class=person&generator=recolor&page=2), so a view can be linked.
(function () {
  "use strict";
  var R = window.REPORT, rows = window.SAMPLES;
  var PAGE = R.page_size || 48;
  var byId = {}, cards = [];
  rows.forEach(function (s) {  // one card per work id; dirs that share a plan line up side by side
    var c = byId[s.w];
    if (!c) { c = byId[s.w] = {w: s.w, c: s.c, i: s.i, src: s.src, recs: []}; cards.push(c); }
    c.recs.push(s);
  });
  var grid = document.getElementById("grid"), filters = document.getElementById("filters");
  var status = document.getElementById("img-status");
  var images = {total: 0, loaded: 0, broken: 0};

  function state() {
    var st = {cls: "", gen: "", page: 1};
    var h = location.hash.replace(/^#/, "");
    if (h.indexOf("=") < 0) return st;
    h.split("&").forEach(function (kv) {
      var p = kv.split("="), k = decodeURIComponent(p[0]), v = decodeURIComponent(p[1] || "");
      if (k === "class") st.cls = v;
      else if (k === "generator") st.gen = v;
      else if (k === "page") st.page = Math.max(1, parseInt(v, 10) || 1);
    });
    return st;
  }
  function hashOf(st) {
    var p = [];
    if (st.cls) p.push("class=" + encodeURIComponent(st.cls));
    if (st.gen) p.push("generator=" + encodeURIComponent(st.gen));
    if (st.page > 1) p.push("page=" + st.page);
    return "#" + (p.length ? p.join("&") : "gallery");
  }
  function select(label, key, values, current) {
    var sel = document.createElement("select");
    sel.id = "filter-" + key;
    [""].concat(values).forEach(function (v) {
      var o = document.createElement("option");
      o.value = v; o.textContent = v || "all"; o.selected = v === current; sel.appendChild(o);
    });
    sel.onchange = function () {
      var st = state(); st[key] = sel.value; st.page = 1; location.hash = hashOf(st);
    };
    var l = document.createElement("label"); l.textContent = label + " ";
    l.appendChild(sel); return l;
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function figure(src, caption) {
    var f = el("figure"), img = el("img");
    img.alt = caption; img.loading = "eager"; images.total++;
    img.onload = function () { images.loaded++; show(); };
    img.onerror = function () { images.broken++; img.dataset.broken = "1"; show(); };
    img.src = src; f.appendChild(img); f.appendChild(el("figcaption", "", caption)); return f;
  }
  function show() {
    status.textContent = "images: " + images.loaded + " loaded, " + images.broken + " failed to load, of " + images.total;
    status.dataset.loaded = images.loaded; status.dataset.broken = images.broken; status.dataset.total = images.total;
  }
  function fmt(v) { return typeof v === "number" && v % 1 ? v.toFixed(3) : String(v); }
  function card(c) {
    var d = el("div", "sample");
    d.dataset.class = c.c; d.dataset.workId = c.w;
    var head = el("div", "head");
    head.appendChild(el("span", "cls", c.c));
    head.appendChild(el("code", "", c.w));
    d.appendChild(head);
    var panels = el("div", "panels"), before = null;
    c.recs.forEach(function (s) { if (s.b && !before) before = s.b; });
    if (before) panels.appendChild(figure(before, "source"));
    c.recs.forEach(function (s) { panels.appendChild(figure(s.a, s.g === "original" ? "original image" : s.g)); });
    d.appendChild(panels);
    c.recs.forEach(function (s) {
      if (s.p) d.appendChild(el("div", "prompt", s.g + ": \u201c" + s.p + "\u201d"));
      var keys = Object.keys(s.s || {});
      if (keys.length) d.appendChild(el("div", "scores", keys.map(function (k) { return k + " " + fmt(s.s[k]); }).join(" \u00b7 ")));
    });
    d.appendChild(el("div", "scores", c.src));
    return d;
  }
  function pager(id, st, pages, total) {
    var p = document.getElementById(id);
    p.innerHTML = "";
    function link(text, page) {
      var a = el("a", page < 1 || page > pages || page === st.page ? "off" : "", text);
      var s2 = {cls: st.cls, gen: st.gen, page: page}; a.href = hashOf(s2); return a;
    }
    p.appendChild(link("\u2039 prev", st.page - 1));
    p.appendChild(el("span", "count", "page " + st.page + " of " + pages + " \u2014 " + total + " samples"));
    p.appendChild(link("next \u203a", st.page + 1));
  }
  function render() {
    var st = state();
    filters.innerHTML = "";
    filters.appendChild(select("class", "cls", R.classes.concat(cards.some(function (c) { return c.c === "original"; }) ? ["original"] : []), st.cls));
    filters.appendChild(select("generator", "gen", R.generators, st.gen));
    var hits = cards.filter(function (c) {
      return (!st.cls || c.c === st.cls) && (!st.gen || c.recs.some(function (s) { return s.g === st.gen; }));
    });
    var pages = Math.max(1, Math.ceil(hits.length / PAGE));
    st.page = Math.min(st.page, pages);
    grid.innerHTML = "";
    grid.dataset.total = hits.length;
    images = {total: 0, loaded: 0, broken: 0};
    hits.slice((st.page - 1) * PAGE, st.page * PAGE).forEach(function (c) { grid.appendChild(card(c)); });
    grid.dataset.shown = grid.children.length;
    pager("pager-top", st, pages, hits.length);
    pager("pager-bottom", st, pages, hits.length);
    show();
    // a filtered view (a linked URL) shows the gallery first
    document.body.classList.toggle("filtered", location.hash.indexOf("=") >= 0);
  }
  window.addEventListener("hashchange", render);
  render();
})();
