"""Offline experiments on a data set: the evaluation splits and runs that
``python -m scripts.evaluate`` and ``python -m scripts.tune`` are command lines for."""
