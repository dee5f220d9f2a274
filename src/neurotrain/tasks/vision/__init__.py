"""The ``vision`` task: segmentation, classification and detection of plain images (2D PNG/TIFF/JPEG, 3D NIfTI).

Rooms beyond the common ones (task.py, config.py, models.py, losses.py, metrics.py, baseline.py,
postprocess.py, predict.py, evaluate.py, plots.py):

* ``data_config.py``: config sections of datasets, samplers and augmentation;
* ``datasets.py``: image/mask folders, image folders, CSV, COCO JSON, the collates, ``build_dataset``;
* ``hybrid.py``: ``HybridDataset``, several datasets mixed by ratios, drawn per epoch;
* ``layouts.py``: named local layouts (DRIVE, CHASE_DB1, STARE, ISIC, BTCV, BraTS, MNIST, CIFAR);
* ``samplers.py``: weighted, class-balanced and priority samplers;
* ``augment.py``: batch augmentations on the device (image and target together);
* ``augment2d.py``: the 2D geometry as one fused warp (one affine ``grid_sample``, random numbers on the device);
* ``cache.py``: the decode-once, memory-mapped cache of 2D image folders and its batched fetch;
* ``detection_export.py``: ONNX export of torchvision detectors for one fixed-size image (``neurotrain export``);
* ``synthetic.py``: the demo's synthetic shape sets;
* ``explain.py``: Grad-CAM and integrated-gradients maps for classifiers (captum).
"""
