"""The trained one-class engine on frozen patch features (see detector.py, docs/oneclass.md)."""
