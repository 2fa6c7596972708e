"""Video data: decoding, manifests, preparation, partitions, clip sampling and transforms."""
