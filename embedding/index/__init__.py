"""The sharded FAISS index of one model version: its kind, builds and updates, loading and search."""
