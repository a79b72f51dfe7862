(function () {
  "use strict";
  var MARKER = "/*inferno.js*/";
  var list = document.getElementById("traces");
  var rows = Array.prototype.slice.call(list.children);
  var q = document.getElementById("q");
  var svc = document.getElementById("svc");
  var sort = document.getElementById("sort");
  var shown = document.getElementById("shown");
  function apply() {
    var text = q.value.trim().toLowerCase();
    var service = svc.value;
    var n = 0;
    rows.forEach(function (r) {
      var ok = (!text || r.getAttribute("data-names").indexOf(text) >= 0) &&
        (!service || r.getAttribute("data-services").split("\n").indexOf(service) >= 0);
      r.hidden = !ok;
      if (ok) n++;
    });
    shown.textContent = String(n);
  }
  function resort() {
    var key = "data-" + sort.value;
    rows.sort(function (a, b) {
      return Number(b.getAttribute(key)) - Number(a.getAttribute(key));
    });
    rows.forEach(function (r) { list.appendChild(r); });
  }
  q.addEventListener("input", apply);
  svc.addEventListener("change", apply);
  sort.addEventListener("change", resort);
  function load(frame) {
    if (frame && frame.hasAttribute("data-srcdoc") && !frame.hasAttribute("srcdoc")) {
      var js = document.getElementById("inferno-js").textContent;
      frame.setAttribute("srcdoc", frame.getAttribute("data-srcdoc").replace(MARKER, function () { return js; }));
    }
  }
  document.addEventListener("click", function (e) {
    var v = e.target.closest ? e.target.closest("button.view") : null;
    if (v) {
      // The profile-type switch: show this type's graph, hide the others.
      var p = v.closest(".profile");
      var want = v.getAttribute("data-view");
      p.querySelectorAll("button.view").forEach(function (o) {
        o.setAttribute("aria-pressed", o === v ? "true" : "false");
      });
      p.querySelectorAll(".fg").forEach(function (f) {
        f.hidden = f.getAttribute("data-view") !== want;
        if (!f.hidden && f.tagName === "IFRAME") load(f);
      });
      return;
    }
    var b = e.target.closest ? e.target.closest("button.toggle") : null;
    if (!b) return;
    var panel = document.getElementById(b.getAttribute("aria-controls"));
    if (!panel) return;
    var open = panel.hidden;
    panel.hidden = !open;
    b.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) load(panel.querySelector("iframe.fg:not([hidden])"));
  });
})();
