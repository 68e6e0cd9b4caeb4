"""The sharded FAISS index of one model version: choosing its kind, building it, loading and searching it."""
