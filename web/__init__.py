"""The clinician's web app (pages and JSON API); built by `app.create_app`. Uses `model/`, never `train/`."""
