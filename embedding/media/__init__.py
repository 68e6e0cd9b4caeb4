"""What the bytes are: images (checks before decoding, headers, decoding and resizing), video (containers and
frame sampling), and text (the word limits), all ending as model-ready inputs."""
