"""What training and serving share: the network, the one preprocessing path, the bundle and inference."""
import os

# TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512 VNNI or BF16 or AMX. On an AVX2-only
# 2-core AMD EPYC they made a fine-tuning step of this network 1.9 times as fast (`python -m bench.train_step`: 1.27 s
# against 2.41; README, Limits); where they are on already this changes nothing. It only counts before TensorFlow
# loads: every entry point imports this package first (train/__init__.py, app.py, tests/conftest.py). A value the
# user set wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
