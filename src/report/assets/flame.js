// Runs in each flame graph's document right after inferno's own script
// (the page holds both once; see src/report/html/flame.rs).
//
// Frame labels. inferno labels each frame with its whole name (taken from the
// frame's <title>) cut to the frame's width. Here a label never shows generic
// arguments (the pprof files name functions without them, but a file from
// another writer may have them), and when a name is still too wide for its
// frame, its leading path segments (the module path) go first, then the rest
// is cut at the right with "..". Only the label changes: the <title> (the
// tooltip, the details line and what search matches) keeps the whole name,
// as the pprof file gives it.

// An about:srcdoc page may not rewrite its URL, so inferno's "keep zoom and
// search state in the URL" becomes a no-op rather than an error.
try { history.replaceState = function () {}; } catch (e) {}

// The labels that may stand for `name`, longest first: the name without
// generic arguments; then with paths inside a qualified type (`<a::B as
// c::D>`) cut to their last segment; then without its leading path segments
// (split at "::" and "/"), one at a time, down to the last segment.
function fg_short_names(name) {
  var names = [];
  function add(n) {
    if (n && names.indexOf(n) < 0) names.push(n);
  }
  var plain = fg_strip_generics(name);
  add(plain);
  var qualified = fg_shorten_qualified(plain);
  add(qualified);
  var parts = fg_split_path(qualified);
  for (var i = 1; i < parts.length; i++) {
    add(parts.slice(i).map(function (p, j) { return (j ? p.sep : "") + p.text; }).join(""));
  }
  return names;
}

// `name` without generic arguments: each `<...>` that follows an identifier
// (`Vec<u8>`, `call_once<F, ()>`, `{closure#0}<T>`), nested ones included.
// A `<` that opens a qualified path (`<A as B>::f`) stays. Unbalanced
// brackets (e.g. C++'s `operator<`) leave the name as it is.
function fg_strip_generics(name) {
  var out = "";
  var depth = 0;
  for (var i = 0; i < name.length; i++) {
    var c = name.charAt(i);
    var prev = i > 0 ? name.charAt(i - 1) : "";
    if (depth > 0) {
      if (c === "<") depth++;
      else if (c === ">" && prev !== "-") depth--;
    } else if (c === "<" && /[A-Za-z0-9_}\]]/.test(prev)) {
      depth = 1;
    } else {
      out += c;
    }
  }
  return depth === 0 ? out : name;
}

// Paths inside each top-level `<...>` cut to their last segment:
// `<alloc::boxed::Box as core::ops::FnOnce>::call_once` becomes
// `<Box as FnOnce>::call_once`.
function fg_shorten_qualified(name) {
  var out = "";
  var depth = 0;
  var start = 0;
  for (var i = 0; i < name.length; i++) {
    var c = name.charAt(i);
    if (c === "<") {
      if (depth === 0) {
        out += name.substring(start, i);
        start = i;
      }
      depth++;
    } else if (c === ">" && depth > 0 && name.charAt(i - 1) !== "-") {
      depth--;
      if (depth === 0) {
        out += name.substring(start, i + 1).replace(/(?:[^\s<>:,()]+::)+/g, "");
        start = i + 1;
      }
    }
  }
  return depth === 0 ? out + name.substring(start) : name;
}

// `name` split at "::" and "/" outside brackets, as {sep, text} (sep: the
// separator before text, "" for the first part).
function fg_split_path(name) {
  var parts = [];
  var depth = 0;
  var sep = "";
  var start = 0;
  for (var i = 0; i < name.length; i++) {
    var c = name.charAt(i);
    if (c === "<" || c === "(" || c === "[") depth++;
    else if ((c === ">" && name.charAt(i - 1) !== "-") || c === ")" || c === "]") depth = Math.max(0, depth - 1);
    else if (depth === 0 && i > start && (c === "/" || (c === ":" && name.charAt(i + 1) === ":"))) {
      parts.push({ sep: sep, text: name.substring(start, i) });
      sep = c === "/" ? "/" : "::";
      start = i + sep.length;
      i = start - 1;
    }
  }
  parts.push({ sep: sep, text: name.substring(start) });
  return parts;
}

(function () {
  "use strict";
  var inferno_update = update_text_for_elements;

  // The width of `s` drawn in text element `t`.
  function width(t, s) {
    if (known_font_width > 0) return s.length * known_font_width;
    t.textContent = s;
    return t.getComputedTextLength();
  }

  function relabel(g) {
    var t = find_child(g, "text");
    var title = find_child(g, "title");
    var r = find_child(g, "rect");
    if (!t || !title || !r) return;
    var shown = t.textContent;
    if (shown === "") return; // inferno found no room for any label
    var full = title.textContent.replace(/\([^(]*\)$/, "").trim();
    var names = fg_short_names(full);
    if (names.length === 1 && names[0] === full && shown.trim() === full) return;
    var w = parseFloat(r.attributes.width.value) * frames.attributes.width.value / 100 - 3;
    for (var i = 0; i < names.length; i++) {
      if (width(t, names[i]) < w) {
        t.textContent = names[i];
        return;
      }
    }
    var last = names[names.length - 1];
    for (var n = last.length - 1; n > 0; n--) {
      var cut = last.substring(0, n) + "..";
      if (width(t, cut) < w) {
        t.textContent = cut;
        return;
      }
    }
    t.textContent = "";
  }

  // inferno calls this whenever labels change: load, resize, zoom, unzoom.
  update_text_for_elements = function (elements) {
    inferno_update(elements);
    for (var i = 0; i < elements.length; i++) relabel(elements[i]);
  };
})();
