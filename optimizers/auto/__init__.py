"""The auto search: preflight, candidate trials, the successive-halving order and the answer.
Plain Python over model descriptions and measured results: the service runs each trial as a
child job and asks this package what to run next (docs/auto.md). No torch, no onnxruntime."""
