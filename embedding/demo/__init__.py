"""Synthetic sample data (coloured shapes with captions in several languages) and the `demo` model version
trained on it, whose weights ship in the package: what the tests and the quick start run on."""
