"""Point clouds for the image engines: multi-view depth rendering (render), generated parts with
known defects (synth) and the "pointcloud" detector (detector)."""
