"""A distributed multimodal embedding job: images and text into one vector space per model version.

The single-item API: `vectorize_image`, `vectorize_text` and `search` (see embedding.api).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "duplicate_groups", "search", "vectorize_image", "vectorize_text"]


def __getattr__(name: str):
    # The API pulls in torch and open_clip; importing `embedding` alone (e.g. for the config) stays light.
    if name in ("search", "vectorize_image", "vectorize_text", "duplicate_groups", "Vector", "Hit"):
        from embedding import api

        return getattr(api, name)
    raise AttributeError(name)
