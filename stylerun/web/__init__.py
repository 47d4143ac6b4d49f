"""Style transfer in a web browser: the site `stylerun export-web` writes and `stylerun serve` serves at /local.

`model` writes the two exported graphs with their weights as 8-bit codes decoded in the
graph; `site` writes the static site (the page, its worker and optimizer, onnxruntime-web's
WASM runtime from `static/`, the models and a config.json of the engine's defaults);
`isolated` is the static-files class that serves it cross-origin isolated, which
onnxruntime-web's threads need. The page's JavaScript sources live in the repository's web/.
"""
