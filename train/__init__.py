"""`python -m train` and the evaluation commands. `model` is imported first: it sets TensorFlow's CPU options."""
import model  # noqa: F401
