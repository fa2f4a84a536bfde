"""Dataset loaders (COCO JSON, Pascal VOC, synthetic) returning lists of records."""
