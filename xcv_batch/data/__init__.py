"""Images in: listing a source without opening it, then decoding, resizing and normalising each image."""
