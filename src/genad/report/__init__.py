"""Pictures and pages made from what a run wrote: overlays (heatmaps in matplotlib's jet, one
colour-scale rule), the index page of `genad detect --out` and the evaluation report, rendered
from the Jinja2 templates in templates/ by genad.report.html (autoescaped). Nothing here
computes a metric."""
