"""Datasets, transforms, mapping and loading.

Dataset records
---------------
A dataset is a function that returns a list of *records*, one per image. Records are plain,
lightweight dicts so that they can be serialised once and shared by loader workers:

``file_name`` (str)
    Absolute path of the image file.
``height``, ``width`` (int)
    Image size as the annotation file states it (checked against the decoded image).
``image_id`` (int or str)
    The dataset's id of the image (COCO ``id``; VOC file stem).
``annotations`` (list[dict])
    One dict per object, with:

    ``bbox`` (list[float]): **xyxy, absolute pixels** (converted from COCO's xywh at load time;
    VOC's 1-based inclusive integer corners become ``(xmin - 1, ymin - 1, xmax, ymax)``);
    ``category_id`` (int): the **contiguous** label in ``[0, K)``; the dataset's own ids are kept
    in the metadata's ``dataset_id_to_contiguous``;
    ``iscrowd`` (int, 0 or 1);
    optional ``segmentation``: a list of polygons (each a flat list ``[x0, y0, x1, y1, ...]``)
    or a COCO RLE dict (``{"size": [h, w], "counts": str | list[int]}``);
    optional ``keypoints``: flat ``[x, y, v] * P`` in **continuous** coordinates (COCO's integer
    pixel indices plus 0.5, see ``structures/keypoints.py``), ``v`` = 0 unlabelled,
    1 labelled but invisible, 2 visible;
    optional ``difficult`` (bool, VOC); optional ``area`` (float, as the file states it);
    optional ``id`` (the annotation's id in the file).
``proposals`` (optional dict)
    Precomputed proposals: ``boxes`` (float32 ndarray [P, 4], xyxy) and ``scores`` ([P]).

Model inputs
------------
The mapper turns a record into the dict a detector takes; a batch is a list of such dicts:
``image`` (Tensor[C, H, W], uint8, in the model's channel order), ``instances``
(``detforge.structures.instances.Instances`` in the coordinates of the transformed image),
``height``/``width`` (original image size, so predictions can be mapped back), ``image_id``,
``file_name``, ``transforms`` (the ``TransformList`` applied; its ``inverse()`` maps predictions
back to the original image), and ``skipped`` when the loader replaced bad samples (see
``detforge.data.loader``).
"""
