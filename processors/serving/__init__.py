"""Prediction and user monitoring (issue 23): pure logic, no Kafka, faust or Redis.

`bins` and `categorical` turn a reference into fixed bins and score drift on integer
counts exactly; `sketches` gives KS and Wasserstein from KLL sketches with their error
bound; `quality` counts data-quality problems; `join` keeps the label-join state of one
prediction; `metrics` turns label counts into accuracy, AUC, MSE, CTR and the rest;
`drift` calibrates thresholds on the reference and judges windows; `stage` composes them
into the counter deltas one batch of records produces. `processors.serving_app` wires it.
"""
