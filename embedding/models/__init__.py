"""Model versions: the registry (what exists, where its weights are), what open_clip knows of them (catalog,
read without importing torch) and loading (open_clip and torch, imported only when a model is loaded)."""
