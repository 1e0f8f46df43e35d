"""The embedded visual engine: pretrained backbones from wheels, zero-shot mutual scoring and
few-shot memory banks, anomaly maps and region proposals (see docs/embedded.md).

Import `genad.engines.embedded.detector.EmbeddedDetector` (or `registry.create("embedded")`);
this package itself stays light so that `regions.propose_regions` does not pull in torch.
"""
