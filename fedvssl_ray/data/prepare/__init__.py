"""Dataset preparation: release layouts -> probed Parquet manifests (see ``common``)."""
