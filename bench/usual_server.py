"""The usual way, for comparison only: what most open-source Flask + Keras classifiers do.

A global model loaded at import, the upload written to disk and read back with
`keras.utils.load_img` (nearest-neighbour resize), `model.predict` per request, Flask's own
threaded server in one process. Same bundle, same JSON shape as the real API.

    python -m bench.usual_server --model BUNDLE --port 8001
"""
import argparse
import os
import tempfile

import keras
import numpy as np
from flask import Flask, jsonify, request

from model.bundle import load_card

app = Flask(__name__)
MODEL = None
CARD = None


@app.post("/api/v1/predict")
def predict():
    upload = request.files["image"]
    with tempfile.NamedTemporaryFile(suffix=".jpg", delete=False) as f:
        upload.save(f)
        path = f.name
    try:
        size = CARD["input_size"]
        img = keras.utils.load_img(path, target_size=(size, size))
        x = np.expand_dims(keras.utils.img_to_array(img), 0)
        p = MODEL.predict(x, verbose=0)[0]
    finally:
        os.unlink(path)
    pm = float(p[1])
    return jsonify({"predictions": [{"filename": upload.filename, "label": "malignant" if pm >= CARD["threshold"]
                                     else "benign", "probability_malignant": pm}]})


@app.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    MODEL = keras.models.load_model(args.model, compile=False)
    CARD = load_card(args.model)
    app.run(host="127.0.0.1", port=args.port, threaded=True)
