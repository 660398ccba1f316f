// require.js reads this global as its configuration when it loads. The widget html-manager
// (embed-amd.js) finds its font files relative to the AMD modules "@jupyter-widgets/*": map
// them onto the copy in _static, or the fonts are looked up next to the page (404).
var require = {
  paths: {
    "@jupyter-widgets": document.documentElement.dataset.content_root + "_static/jupyter-widgets",
  },
};
