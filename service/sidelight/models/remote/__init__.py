"""Remote models: a model repository entry whose forward passes run on another server.

    credit/
      config.yaml        input shape, labels, output kind, methods: as for a local model
      1/remote.yaml      where the model is served (instead of model.pt2 / model.pt / ...)

`config` reads remote.yaml; `client` sends rows to the endpoint in batches, with bounded
concurrency, per-call deadlines, safe retries and figures for metrics and health; `oip` and
`torchserve` speak the two protocols; `module` puts it all behind the nn.Module call that every
perturbation method and Predict make, so that no method knows where its forward pass runs.
"""
