"""Report: figure/table export, run metadata, index page, and the papermill runner."""
