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
  document.addEventListener("click", function (e) {
    var b = e.target.closest ? e.target.closest("button.toggle") : null;
    if (!b) return;
    var panel = document.getElementById(b.getAttribute("aria-controls"));
    if (!panel) return;
    var open = panel.hidden;
    panel.hidden = !open;
    b.setAttribute("aria-expanded", open ? "true" : "false");
    var frame = panel.querySelector("iframe[data-srcdoc]");
    if (open && frame && !frame.hasAttribute("srcdoc")) {
      var js = document.getElementById("inferno-js").textContent;
      frame.setAttribute("srcdoc", frame.getAttribute("data-srcdoc").replace(MARKER, function () { return js; }));
    }
  });
})();
