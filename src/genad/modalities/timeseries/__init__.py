"""Time series: detectors ("ts-matrix-profile", "ts-iforest" in detectors.py; "ts-lmm" in lmm.py),
shared cleaning and thresholding (common.py) and pictures (render.py: render_chart for a model,
plot_result for people). Loaders live in genad.io.timeseries, metrics in genad.metrics.timeseries.
"""
