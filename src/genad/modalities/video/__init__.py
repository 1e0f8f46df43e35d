"""Video: per-frame scoring with the image engines ("video", detector) and rule-based reasoning
with an LMM after AnomalyRuler ("video-rules", rules)."""
